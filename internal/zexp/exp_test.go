package zexp

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/manifest"
)

func TestObjectSize(t *testing.T) {
	srv := miniotest.Start(t)
	srv.SetEnv(t)
	ctx := context.Background()
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(miniotest.Region))
	if err != nil {
		t.Fatal(err)
	}
	c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.BaseEndpoint = aws.String(srv.Endpoint); o.UsePathStyle = true })
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("bench-bucket")}); err != nil {
		t.Fatal(err)
	}
	const total = 256 << 20
	data := make([]byte, total)
	rand.Read(data)
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, data, 0o644)
	for i := 0; i < 3; i++ {
		st := time.Now()
		out, err := exec.Command("cp", src, src+".cp").CombinedOutput()
		if err != nil {
			t.Fatal(err, string(out))
		}
		exec.Command("sync", src+".cp").Run()
		d := time.Since(st)
		t.Logf("cp: %.0f MB/s", float64(total)/d.Seconds()/1e6)
		os.Remove(src + ".cp")
	}
	for _, size := range []int{64 << 10, 1 << 20, 4 << 20, 16 << 20} {
		n := total / size
		for i := 0; i < n; i++ {
			_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("bench-bucket"), Key: aws.String(fmt.Sprintf("%d/%d", size, i)), Body: bytes.NewReader(data[i*size : (i+1)*size])})
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, conc := range []int{4, 16, 64} {
			for _, verify := range []bool{false, true} {
				st := time.Now()
				var next atomic.Int64
				var wg sync.WaitGroup
				for range conc {
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf := make([]byte, size)
						for {
							i := int(next.Add(1)) - 1
							if i >= n {
								return
							}
							r, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("bench-bucket"), Key: aws.String(fmt.Sprintf("%d/%d", size, i))})
							if err != nil {
								t.Error(err)
								return
							}
							_, err = io.ReadFull(r.Body, buf)
							r.Body.Close()
							if err != nil {
								t.Error(err)
								return
							}
							if verify {
								for o := 0; o < size; o += 64 << 10 {
									manifest.Sum(buf[o : o+64<<10])
								}
							}
						}
					}()
				}
				wg.Wait()
				d := time.Since(st)
				t.Logf("size %5d KiB conc %2d verify %v: %.0f MB/s", size>>10, conc, verify, float64(total)/d.Seconds()/1e6)
			}
		}
	}
}
