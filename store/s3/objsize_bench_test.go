package s3

import (
	"context"
	"fmt"
	"testing"

	"github.com/boule-vfs/boule/internal/fanout"
	"github.com/boule-vfs/boule/internal/miniotest"
	"github.com/boule-vfs/boule/manifest"
	"github.com/boule-vfs/boule/store"
	"github.com/boule-vfs/boule/store/storetest"
)

// BenchmarkObjectSize measures what a store on loopback minio serves, in
// MB/s, with the same bytes cut into objects of 64 KiB (one chunk each)
// and into packs of 16 and 32 chunks, 16 GETs in flight, every chunk
// verified. It is why the uploader packs chunks:
//
//	go test -run XXX -bench BenchmarkObjectSize -count 5 ./store/s3
func BenchmarkObjectSize(b *testing.B) {
	srv := miniotest.Start(b)
	srv.SetEnv(b)
	ctx := context.Background()
	s := newS3(b, s3Target(srv.Endpoint, true), Options{})
	const total = 64 << 20
	data := storetest.RandomBytes(7, total)
	n := total / manifest.ChunkSize
	fps := make([]manifest.Fingerprint, n)
	chunks := make([]store.PackedChunk, n)
	for i := range n {
		c := data[i*manifest.ChunkSize : (i+1)*manifest.ChunkSize]
		fps[i] = manifest.Sum(c)
		chunks[i] = store.PackedChunk{FP: fps[i], Data: c}
	}
	for _, per := range []int{1, 16, 32} {
		// Store the objects, and the work: one item per object.
		type item struct {
			pack  bool
			id    manifest.Fingerprint
			first int
			refs  []manifest.PackRef
		}
		var items []item
		for i := 0; i < n; i += per {
			if per == 1 {
				if err := s.PutChunk(ctx, fps[i], chunks[i].Data); err != nil {
					b.Fatal(err)
				}
				items = append(items, item{id: fps[i], first: i})
				continue
			}
			blob, id, refs := store.EncodePack(chunks[i : i+per])
			if err := s.PutPack(ctx, id, blob); err != nil {
				b.Fatal(err)
			}
			items = append(items, item{pack: true, id: id, first: i, refs: refs})
		}
		b.Run(fmt.Sprintf("chunks-per-object=%d", per), func(b *testing.B) {
			b.SetBytes(total)
			for range b.N {
				fanout.Each(16, len(items), func(k int) bool {
					it := items[k]
					if !it.pack {
						if _, err := s.GetChunk(ctx, it.id); err != nil {
							b.Error(err)
						}
						return true
					}
					pack, err := s.GetPack(ctx, it.id)
					if err != nil {
						b.Error(err)
						return false
					}
					for j, ref := range it.refs {
						if _, err := store.DecodePackMember(pack, ref, fps[it.first+j]); err != nil {
							b.Error(err)
							return false
						}
					}
					return true
				})
			}
		})
	}
}
