package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// stripComments removes the // comments of the blocks in Verneuil's
// documentation, outside strings, as a user must before either Verneuil
// or Boule parses them.
func stripComments(data []byte) []byte {
	var out []byte
	inString, escaped := false, false
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '/' && i+1 < len(data) && data[i+1] == '/':
			for i < len(data) && data[i] != '\n' {
				i++
			}
			if i < len(data) {
				out = append(out, '\n')
			}
			continue
		}
		out = append(out, c)
	}
	return out
}

func TestStripComments(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"a": 1} // x`, `{"a": 1} `},
		{"{ // c\n\"u\": \"http://h\"}", "{ \n\"u\": \"http://h\"}"},
		{`{"a\"//": "b"}// end`, `{"a\"//": "b"}`},
	} {
		if got := string(stripComments([]byte(tc.in))); got != tc.want {
			t.Errorf("stripComments(%q)=%q, want %q", tc.in, got, tc.want)
		}
	}
}

// readVerneuil reads a configuration copied from Verneuil's repository
// (see testdata/TestVerneuilConfigs/SOURCES.md).
func readVerneuil(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "TestVerneuilConfigs", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// legacyS3 is the S3 target of the examples in Verneuil's documentation.
var legacyS3 = &S3Target{
	Region:           "us-east-1",
	ChunkBucket:      "verneuil_chunks",
	ManifestBucket:   "verneuil_manifests",
	DomainAddressing: true,
}

// TestVerneuilConfigs loads the configurations of Verneuil's repository
// and documentation (commit 8deba195ef14550d8664fb9889153ec9e653d430;
// testdata/TestVerneuilConfigs/SOURCES.md gives each file and lines):
// every one is accepted, and the documentation's bucket names, which
// only S3's legacy rules allow, are accepted with a warning each.
func TestVerneuilConfigs(t *testing.T) {
	minioS3 := &S3Target{
		Region:                "minio",
		Endpoint:              "http://127.0.0.1:7777",
		ChunkBucket:           "chunks",
		ManifestBucket:        "manifests",
		CreateBucketsOnDemand: true,
	}
	tests := []struct {
		file     string
		fragment bool // a list of targets, without the enclosing object
		want     Config
		warnings []string // substrings, one per warning
	}{
		{
			file: "t_test_with_minio.json",
			want: Config{
				MakeDefault:            true,
				ReplicationSpoolingDir: "/tmp",
				ReplicationTargets: []Target{
					{S3: minioS3},
					{Local: &LocalTarget{Directory: "/tmp/verneuil-cache", NumShards: 10, Capacity: 1000}},
				},
			},
		},
		{
			file: "README_minimal.jsonc",
			want: Config{ReplicationSpoolingDir: "/tmp/verneuil/", ReplicationTargets: []Target{{S3: legacyS3}}},
			warnings: []string{
				`replication_targets[0].s3.chunk_bucket: "verneuil_chunks" is a legacy S3 bucket name ('_')`,
				`replication_targets[0].s3.manifest_bucket: "verneuil_manifests" is a legacy S3 bucket name ('_')`,
			},
		},
		{
			file:     "doc_VFS_replication.jsonc",
			want:     Config{MakeDefault: true, ReplicationSpoolingDir: "/tmp/verneuil", ReplicationTargets: []Target{{S3: legacyS3}}},
			warnings: []string{`"verneuil_chunks"`, `"verneuil_manifests"`},
		},
		{
			file:     "doc_VFS_minio_targets.jsonc",
			fragment: true,
			want:     Config{ReplicationTargets: []Target{{S3: minioS3}}},
		},
		{
			file:     "doc_VFS_local_cache_targets.jsonc",
			fragment: true,
			want:     Config{ReplicationTargets: []Target{{Local: &LocalTarget{Directory: "/tmp/verneuil-cache", NumShards: 100, Capacity: 20000}}}},
		},
		{
			file: "doc_SNAPSHOT_VFS_reader.jsonc",
			want: Config{ReplicationTargets: []Target{
				{S3: legacyS3},
				{Local: &LocalTarget{Directory: "/tmp/verneuil-cache", NumShards: 100, Capacity: 20000}},
			}},
			warnings: []string{`"verneuil_chunks"`, `"verneuil_manifests"`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			data := readVerneuil(t, tc.file)
			if tc.fragment {
				data = append(append([]byte("{"), data...), '}')
			}
			if stripped := stripComments(data); !bytes.Equal(stripped, data) {
				// The comments are not JSON, for Verneuil either.
				if _, err := Parse(data); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "invalid JSON") {
					t.Errorf("Parse(with comments)=%v, want an invalid JSON error", err)
				}
				data = stripped
			}
			got, err := Parse(data)
			if err != nil {
				t.Fatalf("Parse()=%v, want nil error", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse()=%+v, want %+v", got, tc.want)
			}
			warnings := got.Warnings()
			if len(warnings) != len(tc.warnings) {
				t.Fatalf("Warnings()=%q, want %d warnings", warnings, len(tc.warnings))
			}
			for i, w := range tc.warnings {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("Warnings()[%d]=%q, want it to contain %q", i, warnings[i], w)
				}
			}
		})
	}
}

// TestVerneuilSerializedConfig: Verneuil writes its configuration back
// with serde_json, for example into VERNEUIL_CONFIG for the sqlite3 shell
// that `verneuilctl shell` starts: every field of Options, None as null,
// every field of each target, append_instance_id included. This is that
// form, written out from the structs of Verneuil's src/lib.rs,
// src/replication_target.rs and src/snapshot.rs (commit 8deba19) for
// t/test_with_minio.json with the local cache read through a read_only
// target.
func TestVerneuilSerializedConfig(t *testing.T) {
	const serialized = `{"make_default":true,"tempdir":null,"replication_spooling_dir":"/tmp",` +
		`"replication_spooling_dir_permissions":null,"replication_targets":[` +
		`{"s3":{"region":"minio","endpoint":"http://127.0.0.1:7777","chunk_bucket":"chunks","manifest_bucket":"manifests","domain_addressing":false,"create_buckets_on_demand":true}},` +
		`{"read_only":{"directory":"/tmp/verneuil-cache","num_shards":10,"append_instance_id":true}}],` +
		`"snapshot_loading_policy":"default"}`
	yes := true
	want := Config{
		MakeDefault:            true,
		ReplicationSpoolingDir: "/tmp",
		ReplicationTargets: []Target{
			{S3: &S3Target{Region: "minio", Endpoint: "http://127.0.0.1:7777", ChunkBucket: "chunks", ManifestBucket: "manifests", CreateBucketsOnDemand: true}},
			{ReadOnly: &ReadOnlyTarget{Directory: "/tmp/verneuil-cache", NumShards: 10, AppendInstanceID: &yes}},
		},
		SnapshotLoadingPolicy: LoadingPolicy{Kind: "default"},
	}
	got := mustParse(t, serialized)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse()=%+v, want %+v", got, want)
	}
	// Verneuil's partial policy with its bounds left out.
	got, err := Parse([]byte(`{"snapshot_loading_policy":{"partial":{"min":null,"max":null}}}`))
	if err != nil || got.SnapshotLoadingPolicy != (LoadingPolicy{Kind: "partial"}) {
		t.Errorf("Parse(partial with null bounds)=%+v, %v, want the partial policy", got.SnapshotLoadingPolicy, err)
	}
}

func TestAppendInstanceID(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		name    string
		body    string
		want    *bool
		wantErr string
	}{
		{name: "absent", body: `{"directory":"/c"}`},
		{name: "null", body: `{"directory":"/c","append_instance_id":null}`},
		{name: "true", body: `{"directory":"/c","append_instance_id":true}`, want: &yes},
		{name: "false", body: `{"directory":"/c","append_instance_id":false}`, want: &no},
		{name: "string", body: `{"directory":"/c","append_instance_id":"true"}`, wantErr: "replication_targets[0].read_only.append_instance_id: expected a boolean, got string"},
		{name: "in a local target", body: ``, wantErr: `replication_targets[0].local: unknown key "append_instance_id"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := `{"replication_targets":[{"read_only":` + tc.body + `}]}`
			if tc.body == "" {
				doc = `{"replication_targets":[{"local":{"directory":"/c","num_shards":1,"capacity":1,"append_instance_id":true}}]}`
			}
			got, err := Parse([]byte(doc))
			if checkErr(t, "Parse()", err, tc.wantErr) {
				return
			}
			ro := got.ReplicationTargets[0].ReadOnly
			if !reflect.DeepEqual(ro.AppendInstanceID, tc.want) {
				t.Errorf("Parse() AppendInstanceID=%v, want %v", ro.AppendInstanceID, tc.want)
			}
			// Written back only when it was given, and read back the same.
			out, err := json.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			if has := bytes.Contains(out, []byte(`"append_instance_id"`)); has != (tc.want != nil) {
				t.Errorf("MarshalJSON()=%s, want append_instance_id written: %v", out, tc.want != nil)
			}
			back, err := Parse(out)
			if err != nil || !reflect.DeepEqual(back, got) {
				t.Errorf("Parse(%s)=%+v, %v, want %+v", out, back, err, got)
			}
		})
	}
}

func TestFromEnv(t *testing.T) {
	const notice = "VERNEUIL_CONFIG used because BOULE_CONFIG is"
	tests := []struct {
		name   string
		env    map[string]string
		want   string
		notice string // "" when no notice is wanted
	}{
		{name: "neither", env: map[string]string{}, want: ""},
		{name: "BOULE_CONFIG only", env: map[string]string{"BOULE_CONFIG": "@/b.json"}, want: "@/b.json"},
		{name: "both", env: map[string]string{"BOULE_CONFIG": "@/b.json", "VERNEUIL_CONFIG": "@/v.json"}, want: "@/b.json"},
		{name: "VERNEUIL_CONFIG only", env: map[string]string{"VERNEUIL_CONFIG": "@/v.json"}, want: "@/v.json", notice: notice + " unset"},
		{name: "BOULE_CONFIG empty", env: map[string]string{"BOULE_CONFIG": "", "VERNEUIL_CONFIG": "@/v.json"}, want: "@/v.json", notice: notice + " empty"},
		{name: "BOULE_CONFIG blank", env: map[string]string{"BOULE_CONFIG": " \n", "VERNEUIL_CONFIG": "{}"}, want: "{}", notice: notice + " empty"},
		{name: "VERNEUIL_CONFIG blank", env: map[string]string{"VERNEUIL_CONFIG": " "}, want: ""},
		{name: "both blank", env: map[string]string{"BOULE_CONFIG": "\t", "VERNEUIL_CONFIG": " "}, want: "\t"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			legacyNoted.Store(false)
			t.Cleanup(func() { legacyNoted.Store(false) })
			lookup := func(k string) (string, bool) {
				v, ok := tc.env[k]
				return v, ok
			}
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, nil))
			for i := range 3 {
				if got := FromEnv(lookup, log); got != tc.want {
					t.Fatalf("FromEnv() #%d=%q, want %q", i+1, got, tc.want)
				}
			}
			logged := buf.String()
			if tc.notice == "" {
				if logged != "" {
					t.Errorf("FromEnv() logged %q, want nothing", logged)
				}
				return
			}
			if n := strings.Count(logged, "level=WARN"); n != 1 || !strings.Contains(logged, tc.notice) {
				t.Errorf("FromEnv() three times logged %q, want one warning containing %q", logged, tc.notice)
			}
		})
	}
}

func TestBucketNames(t *testing.T) {
	tests := []struct {
		name   string
		bucket string
		err    string // substring of the refusal; "" when accepted
		legacy string // substring of the warning; "" when none
	}{
		{name: "today's rules", bucket: "my-chunks.1"},
		{name: "three characters", bucket: "abc"},
		{name: "63 characters", bucket: strings.Repeat("a", 63)},
		{name: "digits only", bucket: "123"},
		{name: "underscore", bucket: "verneuil_chunks", legacy: "('_')"},
		{name: "uppercase", bucket: "VerneuilChunks", legacy: "(uppercase letters)"},
		{name: "uppercase and underscore", bucket: "Verneuil_Chunks", legacy: "(uppercase letters, '_')"},
		{name: "64 characters", bucket: strings.Repeat("a", 64), legacy: "(64 characters)"},
		{name: "255 characters", bucket: strings.Repeat("a", 255), legacy: "(255 characters)"},
		{name: "two dots", bucket: "a..b", legacy: `("..")`},
		{name: "dot dash", bucket: "a.-b", legacy: `(".-")`},
		{name: "dash dot", bucket: "a-.b", legacy: `("-.")`},
		{name: "final dash", bucket: "chunks-", legacy: `(a final '-')`},
		{name: "final dot", bucket: "chunks.", legacy: `(a final '.')`},
		{name: "final underscore", bucket: "chunks_", legacy: `('_')`},
		{name: "three numbers", bucket: "1.2.3", err: ""},
		{name: "five numbers", bucket: "1.2.3.4.5"},
		{name: "too short", bucket: "ab", err: "must be 3 to 63 characters long"},
		{name: "256 characters", bucket: strings.Repeat("a", 256), err: "(255 for legacy names)"},
		{name: "IP address", bucket: "192.168.5.4", err: "must not be an IP address"},
		{name: "shaped like an IP address", bucket: "999.00.1.2", err: "must not be an IP address"},
		{name: "leading dash", bucket: "-chunks", err: "must start with a letter or digit"},
		{name: "leading dot", bucket: ".chunks", err: "must start with a letter or digit"},
		{name: "leading underscore", bucket: "_chunks", err: "must start with a letter or digit"},
		{name: "space", bucket: "my chunks", err: "only lowercase letters"},
		{name: "colon", bucket: "my:chunks", err: "only lowercase letters"},
		{name: "slash", bucket: "my/chunks", err: "only lowercase letters"},
		{name: "percent", bucket: "my%2fchunks", err: "only lowercase letters"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{ReplicationTargets: []Target{{S3: &S3Target{Region: "us-east-1", ChunkBucket: tc.bucket, ManifestBucket: "manifests"}}}}
			err := cfg.Validate()
			if tc.err != "" {
				var e *Error
				if !errors.As(err, &e) || e.Key != "replication_targets[0].s3.chunk_bucket" || !strings.Contains(e.Msg, tc.err) {
					t.Fatalf("Validate()=%v, want an error at chunk_bucket containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Validate()=%v, want nil", err)
			}
			warnings := cfg.Warnings()
			if tc.legacy == "" {
				if len(warnings) != 0 {
					t.Errorf("Warnings()=%q, want none", warnings)
				}
				return
			}
			if len(warnings) != 1 || !strings.Contains(warnings[0], tc.legacy) ||
				!strings.HasPrefix(warnings[0], "config: replication_targets[0].s3.chunk_bucket: ") ||
				!strings.Contains(warnings[0], "MinIO") {
				t.Errorf("Warnings()=%q, want one for chunk_bucket containing %q", warnings, tc.legacy)
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	legacy := &S3Target{Region: "us-east-1", ChunkBucket: "Chunks", ManifestBucket: "manifests_1"}
	tests := []struct {
		name string
		cfg  Config
		keys []string
	}{
		{name: "zero", cfg: Config{}},
		{name: "other targets", cfg: Config{ReplicationTargets: []Target{{Dir: &DirTarget{Path: "/d"}}, {ReadOnly: &ReadOnlyTarget{Directory: "/r"}}}}},
		{name: "both buckets of the second target", cfg: Config{ReplicationTargets: []Target{{Dir: &DirTarget{Path: "/d"}}, {S3: legacy}}},
			keys: []string{"replication_targets[1].s3.chunk_bucket", "replication_targets[1].s3.manifest_bucket"}},
		{name: "an invalid name is not a warning", cfg: Config{ReplicationTargets: []Target{{S3: &S3Target{Region: "us-east-1", ChunkBucket: "_x", ManifestBucket: "ab"}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.cfg.Warnings()
			if len(got) != len(tc.keys) {
				t.Fatalf("Warnings()=%q, want %d", got, len(tc.keys))
			}
			for i, k := range tc.keys {
				if !strings.HasPrefix(got[i], "config: "+k+": ") {
					t.Errorf("Warnings()[%d]=%q, want it to start with %q", i, got[i], "config: "+k)
				}
			}
		})
	}
}

// TestRegionShorthand: without an endpoint, a region that is not AWS's
// means what Verneuil's parse_s3_region_specification makes of it.
func TestRegionShorthand(t *testing.T) {
	tests := []struct {
		region, endpoint         string // as configured
		wantRegion, wantEndpoint string
	}{
		{region: "us-east-1", wantRegion: "us-east-1"},
		{region: "eu-central-1", wantRegion: "eu-central-1"},
		// AWS regions newer than Verneuil's list stay AWS's.
		{region: "ap-southeast-5", wantRegion: "ap-southeast-5"},
		{region: "mx-central-1", wantRegion: "mx-central-1"},
		{region: "us-gov-west-1", wantRegion: "us-gov-west-1"},
		{region: "cn-northwest-1", wantRegion: "cn-northwest-1"},
		{region: "us-isob-east-1", wantRegion: "us-isob-east-1"},
		// Other providers' regions that Verneuil knows by name.
		{region: "nyc3", wantRegion: "nyc3", wantEndpoint: "https://nyc3.digitaloceanspaces.com"},
		{region: "fra1", wantRegion: "fra1", wantEndpoint: "https://fra1.digitaloceanspaces.com"},
		{region: "yandex", wantRegion: "ru-central1", wantEndpoint: "https://storage.yandexcloud.net"},
		{region: "ru-central1", wantRegion: "ru-central1", wantEndpoint: "https://storage.yandexcloud.net"},
		{region: "wa-eu-central-1", wantRegion: "eu-central-1", wantEndpoint: "https://s3.eu-central-1.wasabisys.com"},
		// region.domain, and a bare name.
		{region: "minio.s3.example.com", wantRegion: "minio", wantEndpoint: "https://s3.example.com"},
		{region: "us-east-1.127.0.0.1:9000", wantRegion: "us-east-1", wantEndpoint: "https://127.0.0.1:9000"},
		{region: "garage.[::1]:3900", wantRegion: "garage", wantEndpoint: "https://[::1]:3900"},
		{region: "minio.localhost/prefix", wantRegion: "minio", wantEndpoint: "https://localhost/prefix"},
		{region: "minio", wantRegion: "minio", wantEndpoint: "https://minio"},
		{region: "US-EAST-1", wantRegion: "US-EAST-1", wantEndpoint: "https://US-EAST-1"},
		// An endpoint is taken as it is, with the region.
		{region: "minio", endpoint: "http://127.0.0.1:9000", wantRegion: "minio", wantEndpoint: "http://127.0.0.1:9000"},
		{region: "minio.example.com", endpoint: "http://127.0.0.1:9000", wantRegion: "minio.example.com", wantEndpoint: "http://127.0.0.1:9000"},
		{region: "nyc3", endpoint: "https://elsewhere", wantRegion: "nyc3", wantEndpoint: "https://elsewhere"},
	}
	for _, tc := range tests {
		t.Run(tc.region+"@"+tc.endpoint, func(t *testing.T) {
			body := map[string]any{"region": tc.region}
			if tc.endpoint != "" {
				body["endpoint"] = tc.endpoint
			}
			got := mustParse(t, s3(body))
			s := got.ReplicationTargets[0].S3
			if s.Region != tc.wantRegion || s.Endpoint != tc.wantEndpoint {
				t.Errorf("Parse() region, endpoint=%q, %q, want %q, %q", s.Region, s.Endpoint, tc.wantRegion, tc.wantEndpoint)
			}
			// What Parse made of it means the same when parsed again.
			out, err := json.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(out)
			if err != nil || !reflect.DeepEqual(back, got) {
				t.Errorf("Parse(%s)=%+v, %v, want %+v", out, back, err, got)
			}
		})
	}

	// Validate replaces the target rather than writing through it.
	shared := &S3Target{Region: "minio.example.com", ChunkBucket: "chunks", ManifestBucket: "manifests"}
	cfg := Config{ReplicationTargets: []Target{{S3: shared}}}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate()=%v, want nil", err)
	}
	if got := cfg.ReplicationTargets[0].S3.Endpoint; got != "https://example.com" {
		t.Errorf("Validate() Endpoint=%q, want %q", got, "https://example.com")
	}
	if shared.Region != "minio.example.com" || shared.Endpoint != "" {
		t.Errorf("Validate() wrote through the pointer: %+v", *shared)
	}
}

// TestRelativeTempdir: Verneuil takes a relative tempdir relative to the
// working directory; Boule makes it absolute when it validates it.
func TestRelativeTempdir(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ tempdir, want string }{
		{"tmp", filepath.Join(wd, "tmp")},
		{"./a/../b/", filepath.Join(wd, "b")},
		{".", wd},
		{"/abs//path/", "/abs//path/"}, // absolute: as given
	} {
		t.Run(tc.tempdir, func(t *testing.T) {
			doc, _ := json.Marshal(map[string]string{"tempdir": tc.tempdir})
			got, err := Parse(doc)
			if err != nil {
				t.Fatalf("Parse()=%v, want nil error", err)
			}
			if got.Tempdir != tc.want {
				t.Errorf("Parse() Tempdir=%q, want %q", got.Tempdir, tc.want)
			}
		})
	}
	// The absolute path survives a move to another directory.
	cfg, err := Parse([]byte(`{"tempdir":"tmp"}`))
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	if err := cfg.Validate(); err != nil || cfg.Tempdir != filepath.Join(wd, "tmp") {
		t.Errorf("Validate() elsewhere: Tempdir=%q, %v, want %q", cfg.Tempdir, err, filepath.Join(wd, "tmp"))
	}
}
