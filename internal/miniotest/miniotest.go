package miniotest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvBinary names the environment variable that overrides the path of
// the minio binary.
const EnvBinary = "BOULE_MINIO"

// Region is the region the server answers for, and the one Env sets.
const Region = "us-east-1"

// readyTimeout bounds the wait for a starting server to answer.
const readyTimeout = 60 * time.Second

// ErrNoBinary is returned by Launch when the minio binary is missing.
var ErrNoBinary = errors.New("miniotest: minio binary not found; run `make minio`")

// Server is a running MinIO server on loopback.
type Server struct {
	// Endpoint is the server's URL, "http://127.0.0.1:PORT".
	Endpoint string
	// AccessKey and SecretKey are the root credentials, random for each
	// server.
	AccessKey, SecretKey string
	// DataDir holds the server's objects.
	DataDir string

	bin       string
	addr      string
	console   string
	certsDir  string
	ownedDirs []string // removed by Close, for servers from Launch
	logPath   string
	anyRegion bool // no MINIO_REGION: requests signed for any region pass
	mu        sync.Mutex
	cmd       *exec.Cmd
	exited    chan struct{}
}

// Binary returns the path of the minio binary, or "" if there is none:
// $BOULE_MINIO if set, else .tools/bin/minio under the directory holding
// go.mod, searched upwards from the working directory.
func Binary() string {
	if p := os.Getenv(EnvBinary); p != "" {
		if isExecutable(p) {
			return p
		}
		return ""
	}
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, ".tools", "bin", "minio")
			if isExecutable(p) {
				return p
			}
			return ""
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Start starts a server for the test and stops it when the test ends. If
// the binary is missing it skips the test, or fails it when the CI
// environment variable is "true".
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, false)
}

// StartAnyRegion starts a server as Start does, but without a configured
// region, as MinIO runs with its defaults (and as Verneuil's tests run
// it): it then accepts requests signed for any region, such as "minio".
func StartAnyRegion(t testing.TB) *Server {
	t.Helper()
	return start(t, true)
}

func start(t testing.TB, anyRegion bool) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		SkipOrFail(t)
	}
	tmp := t.TempDir()
	s, err := launch(bin, filepath.Join(tmp, "data"), filepath.Join(tmp, "certs"), filepath.Join(tmp, "minio.log"), anyRegion)
	if err != nil {
		t.Fatalf("miniotest: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("miniotest: the server's log (%s), last lines:\n%s", s.Endpoint, s.logTail())
		}
	})
	return s
}

// SkipOrFail skips t because the minio binary is missing, or fails it if
// the CI environment variable is "true".
func SkipOrFail(t testing.TB) {
	t.Helper()
	msg := fmt.Sprintf("minio binary not found (set %s or run `make minio` to build .tools/bin/minio)", EnvBinary)
	if os.Getenv("CI") == "true" {
		t.Fatalf("miniotest: %s", msg)
	}
	t.Skip("miniotest: " + msg)
}

// Launch starts a server outside any test, for sharing between the
// tests of a package from TestMain. The caller must call Close. It
// returns ErrNoBinary if the binary is missing.
func Launch() (*Server, error) {
	bin := Binary()
	if bin == "" {
		return nil, ErrNoBinary
	}
	tmp, err := os.MkdirTemp("", "miniotest-")
	if err != nil {
		return nil, err
	}
	s, err := launch(bin, filepath.Join(tmp, "data"), filepath.Join(tmp, "certs"), filepath.Join(tmp, "minio.log"), false)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	s.ownedDirs = []string{tmp}
	return s, nil
}

// Close stops the server and removes the directories Launch created.
func (s *Server) Close() {
	s.Stop()
	for _, d := range s.ownedDirs {
		os.RemoveAll(d)
	}
}

func launch(bin, dataDir, certsDir, logPath string, anyRegion bool) (*Server, error) {
	for _, d := range []string{dataDir, certsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	s := &Server{
		AccessKey: "ak" + randHex(9),
		SecretKey: "sk" + randHex(19),
		DataDir:   dataDir,
		bin:       bin,
		certsDir:  certsDir,
		logPath:   logPath,
		anyRegion: anyRegion,
	}
	var err error
	for range 5 { // ports picked by the kernel may be taken meanwhile
		s.addr, s.console, err = freePorts()
		if err != nil {
			return nil, err
		}
		s.Endpoint = "http://" + s.addr
		if err = s.startProcess(); err == nil {
			return s, nil
		}
	}
	return nil, err
}

// freePorts returns two loopback addresses with ports that were free.
func freePorts() (string, string, error) {
	var out [2]string
	var ls [2]net.Listener
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, p := range ls[:i] {
				p.Close()
			}
			return "", "", err
		}
		ls[i] = l
		out[i] = l.Addr().String()
	}
	for _, l := range ls {
		l.Close()
	}
	return out[0], out[1], nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startProcess runs the binary and waits until it is ready.
func (s *Server) startProcess() error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "server", "--quiet",
		"--address", s.addr, "--console-address", s.console,
		"--certs-dir", s.certsDir, s.DataDir)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MINIO_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env,
		"MINIO_ROOT_USER="+s.AccessKey,
		"MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
	)
	if !s.anyRegion {
		cmd.Env = append(cmd.Env, "MINIO_REGION="+Region)
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	if err := s.waitReady(exited); err != nil {
		s.Stop()
		return err
	}
	return nil
}

// waitReady polls the liveness endpoint with a short backoff.
func (s *Server) waitReady(exited <-chan struct{}) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(readyTimeout)
	delay := 20 * time.Millisecond
	for {
		// cluster, not live: live answers before the object layer is up,
		// and bucket calls then get 503 for a moment.
		resp, err := client.Get(s.Endpoint + "/minio/health/cluster")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && s.apiReady(client) {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("minio exited during startup; log:\n%s", s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("minio not ready after %v (last error: %v); log:\n%s", readyTimeout, err, s.logTail())
		}
		time.Sleep(delay) // readiness polling, not test synchronization
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// apiReady reports whether the S3 API answers: an anonymous ListBuckets
// gets 403 once the server is up, and 503 (XMinioServerNotInitialized)
// for a moment after the health checks already pass.
func (s *Server) apiReady(client *http.Client) bool {
	resp, err := client.Get(s.Endpoint + "/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode != http.StatusServiceUnavailable
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return "(no log)"
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// detach takes the running server process from s, for one caller to stop,
// with the channel closed when it has exited. It returns a nil cmd when
// none runs (or another caller took it).
func (s *Server) detach() (cmd *exec.Cmd, exited <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd, exited = s.cmd, s.exited
	s.cmd = nil
	return cmd, exited
}

// Stop stops the server: SIGTERM, then SIGKILL if it has not exited
// within 5 seconds. It is safe to call more than once.
func (s *Server) Stop() {
	cmd, exited := s.detach()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return
	case <-time.After(5 * time.Second):
	}
	// Kill the process group the server leads, which is only its own.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
}

// Restart stops the server and starts it again on the same port with the
// same data and credentials.
func (s *Server) Restart() error {
	s.Stop()
	var err error
	for range 20 { // the port may linger briefly
		if err = s.startProcess(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Env returns the environment variables that point the AWS SDK's default
// chain at this server's credentials and region, and keep it away from
// the user's shared config files and the instance metadata service.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_REGION=" + Region,
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_ENDPOINT_URL=",
		"AWS_ENDPOINT_URL_S3=",
	}
}

// SetEnv sets Env's variables for the duration of the test.
func (s *Server) SetEnv(t testing.TB) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}
