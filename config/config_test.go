package config

import (
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// verneuilExample has the shape of the example configuration in
// Verneuil's documentation: a spooling directory, an S3 target for a
// local MinIO, and a local chunk cache.
const verneuilExample = `{
  "make_default": true,
  "replication_spooling_dir": "/tmp/verneuil/",
  "replication_targets": [
    {
      "s3": {
        "region": "minio",
        "endpoint": "http://127.0.0.1:7777",
        "chunk_bucket": "chunks",
        "manifest_bucket": "manifests",
        "domain_addressing": false,
        "create_buckets_on_demand": true
      }
    },
    {
      "local": {
        "directory": "/tmp/verneuil-cache/",
        "num_shards": 128,
        "capacity": 10000
      }
    }
  ]
}`

// verneuilExampleConfig is what verneuilExample parses to.
var verneuilExampleConfig = Config{
	MakeDefault:            true,
	ReplicationSpoolingDir: "/tmp/verneuil/",
	ReplicationTargets: []Target{
		{S3: &S3Target{
			Region:                "minio",
			Endpoint:              "http://127.0.0.1:7777",
			ChunkBucket:           "chunks",
			ManifestBucket:        "manifests",
			DomainAddressing:      false,
			CreateBucketsOnDemand: true,
		}},
		{Local: &LocalTarget{Directory: "/tmp/verneuil-cache/", NumShards: 128, Capacity: 10000}},
	},
}

// validCase is a configuration that Parse accepts.
type validCase struct {
	name string
	json string
	want Config
}

// validCases are shared by the Parse, round-trip and fuzz tests.
var validCases = []validCase{
	{name: "empty object", json: `{}`, want: Config{}},
	{name: "empty object with white space", json: " \n\t{ }\r\n ", want: Config{}},
	{name: "verneuil example", json: verneuilExample, want: verneuilExampleConfig},
	{
		name: "dir target",
		json: `{"replication_spooling_dir":"/var/spool/boule","replication_targets":[{"dir":{"path":"/srv/replica"}}]}`,
		want: Config{
			ReplicationSpoolingDir: "/var/spool/boule",
			ReplicationTargets:     []Target{{Dir: &DirTarget{Path: "/srv/replica"}}},
		},
	},
	{
		name: "dir target path is cleaned",
		json: `{"replication_targets":[{"dir":{"path":"/srv//replica/./x/../"}}]}`,
		want: Config{ReplicationTargets: []Target{{Dir: &DirTarget{Path: "/srv/replica"}}}},
	},
	{
		name: "several targets",
		json: `{"replication_targets":[
			{"local":{"directory":"/cache","num_shards":4,"capacity":1}},
			{"read_only":{"directory":"/seed","num_shards":16}},
			{"s3":{"region":"us-east-1","chunk_bucket":"my.chunks-1","manifest_bucket":"my-manifests","domain_addressing":true}},
			{"dir":{"path":"/backup"}}]}`,
		want: Config{ReplicationTargets: []Target{
			{Local: &LocalTarget{Directory: "/cache", NumShards: 4, Capacity: 1}},
			{ReadOnly: &ReadOnlyTarget{Directory: "/seed", NumShards: 16}},
			{S3: &S3Target{Region: "us-east-1", ChunkBucket: "my.chunks-1", ManifestBucket: "my-manifests", DomainAddressing: true}},
			{Dir: &DirTarget{Path: "/backup"}},
		}},
	},
	{
		name: "read_only target without num_shards",
		json: `{"replication_targets":[{"read_only":{"directory":"/seed"}}]}`,
		want: Config{ReplicationTargets: []Target{{ReadOnly: &ReadOnlyTarget{Directory: "/seed"}}}},
	},
	{
		name: "read_only target with null num_shards",
		json: `{"replication_targets":[{"read_only":{"directory":"/seed","num_shards":null}}]}`,
		want: Config{ReplicationTargets: []Target{{ReadOnly: &ReadOnlyTarget{Directory: "/seed"}}}},
	},
	{
		name: "every top-level key",
		json: `{"make_default":true,"tempdir":"/tmp/boule","replication_spooling_dir":"/spool",
			"replication_spooling_dir_permissions":488,"replication_targets":[{"dir":{"path":"/r"}}],
			"snapshot_loading_policy":"eager","max_requests_per_second":12.5,"pack_chunks":16,
			"capture_memory_mib":128,"manifest_pace_ms":250}`,
		want: Config{
			MakeDefault:                       true,
			Tempdir:                           "/tmp/boule",
			ReplicationSpoolingDir:            "/spool",
			ReplicationSpoolingDirPermissions: 0o750,
			ReplicationTargets:                []Target{{Dir: &DirTarget{Path: "/r"}}},
			SnapshotLoadingPolicy:             LoadingPolicy{Kind: "eager"},
			MaxRequestsPerSecond:              12.5,
			PackChunks:                        16,
			CaptureMemoryMiB:                  128,
			ManifestPaceMs:                    250,
		},
	},
	{
		name: "null optional keys",
		json: `{"make_default":null,"tempdir":null,"replication_spooling_dir":null,
			"replication_spooling_dir_permissions":null,"replication_targets":null,
			"snapshot_loading_policy":null,"max_requests_per_second":null,"pack_chunks":null,
			"capture_memory_mib":null,"manifest_pace_ms":null}`,
		want: Config{},
	},
	{
		name: "null optional keys in s3 target",
		json: `{"replication_targets":[{"s3":{"region":"us-west-2","endpoint":null,"chunk_bucket":"abc","manifest_bucket":"def","domain_addressing":true,"create_buckets_on_demand":null}}]}`,
		want: Config{ReplicationTargets: []Target{{S3: &S3Target{Region: "us-west-2", ChunkBucket: "abc", ManifestBucket: "def", DomainAddressing: true}}}},
	},
	{
		name: "empty target list",
		json: `{"replication_targets":[]}`,
		want: Config{},
	},
	{
		name: "integers with exponents and fractions",
		json: `{"replication_spooling_dir_permissions":4.48e2,"replication_targets":[{"local":{"directory":"/c","num_shards":1E1,"capacity":1000e-3}}]}`,
		want: Config{
			ReplicationSpoolingDirPermissions: 0o700,
			ReplicationTargets:                []Target{{Local: &LocalTarget{Directory: "/c", NumShards: 10, Capacity: 1}}},
		},
	},
	{
		name: "largest integers",
		json: `{"replication_spooling_dir_permissions":4095,"replication_targets":[{"local":{"directory":"/c","num_shards":4294967295,"capacity":140737488355328}}]}`,
		want: Config{
			ReplicationSpoolingDirPermissions: 0o7777,
			ReplicationTargets:                []Target{{Local: &LocalTarget{Directory: "/c", NumShards: math.MaxUint32, Capacity: MaxLocalCapacity}}},
		},
	},
	{
		name: "https endpoint with port and path",
		json: `{"replication_targets":[{"s3":{"region":"eu","endpoint":"https://s3.example.com:8443/base","chunk_bucket":"123","manifest_bucket":"a-b.c","domain_addressing":false}}]}`,
		want: Config{ReplicationTargets: []Target{{S3: &S3Target{Region: "eu", Endpoint: "https://s3.example.com:8443/base", ChunkBucket: "123", ManifestBucket: "a-b.c"}}}},
	},
	{name: "policy default", json: `{"snapshot_loading_policy":"default"}`, want: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "default"}}},
	{name: "policy default object", json: `{"snapshot_loading_policy":{"default":null}}`, want: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "default"}}},
	{name: "policy eager", json: `{"snapshot_loading_policy":{"eager":null}}`, want: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "eager"}}},
	{name: "policy partial", json: `{"snapshot_loading_policy":{"partial":{"min":2,"max":64}}}`, want: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "partial", Min: 2, Max: 64}}},
	{name: "policy partial without bounds", json: `{"snapshot_loading_policy":{"partial":{}}}`, want: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "partial"}}},
	{name: "policy partial with null bound", json: `{"snapshot_loading_policy":{"partial":{"min":null,"max":3}}}`, want: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "partial", Max: 3}}},
	{
		name: "read_only target with append_instance_id",
		json: `{"replication_targets":[{"read_only":{"directory":"/seed","num_shards":2,"append_instance_id":false}}]}`,
		want: Config{ReplicationTargets: []Target{{ReadOnly: &ReadOnlyTarget{Directory: "/seed", NumShards: 2, AppendInstanceID: new(bool)}}}},
	},
	{
		name: "legacy bucket names",
		json: `{"replication_targets":[{"s3":{"region":"us-east-1","chunk_bucket":"Verneuil_Chunks","manifest_bucket":"a..b-","domain_addressing":false}}]}`,
		want: Config{ReplicationTargets: []Target{{S3: &S3Target{Region: "us-east-1", ChunkBucket: "Verneuil_Chunks", ManifestBucket: "a..b-"}}}},
	},
	{
		name: "region shorthand",
		json: `{"replication_targets":[{"s3":{"region":"minio.s3.example.com:9000","chunk_bucket":"c-1","manifest_bucket":"m-1","domain_addressing":false}}]}`,
		want: Config{ReplicationTargets: []Target{{S3: &S3Target{Region: "minio", Endpoint: "https://s3.example.com:9000", ChunkBucket: "c-1", ManifestBucket: "m-1"}}}},
	},
	{name: "tiny rate", json: `{"max_requests_per_second":0.001}`, want: Config{MaxRequestsPerSecond: 0.001}},
	{name: "escaped strings", json: `{"tempdir":"/tmp/caf\u00e9 \"x\""}`, want: Config{Tempdir: "/tmp/café \"x\""}},
}

func TestParseValid(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			got := mustParse(t, tc.json)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse()=%+v, want %+v", got, tc.want)
			}
		})
	}
}

// invalidCase is a configuration that Parse rejects with an error whose
// message contains each of want.
type invalidCase struct {
	name string
	json string
	key  string   // want Key of the *Error
	want []string // substrings of the message
}

// s3 returns a replication_targets list with one s3 target whose body
// is the valid one of the Verneuil example with the keys in fields
// replaced or, for a nil value, removed.
func s3(fields map[string]any) string {
	body := map[string]any{
		"region":            "minio",
		"chunk_bucket":      "chunks",
		"manifest_bucket":   "manifests",
		"domain_addressing": false,
	}
	for k, v := range fields {
		if v == nil {
			delete(body, k)
		} else {
			body[k] = v
		}
	}
	out, err := json.Marshal(map[string]any{"replication_targets": []any{map[string]any{"s3": body}}})
	if err != nil {
		panic(err)
	}
	return string(out)
}

// raw is a JSON literal for s3's fields.
type raw = json.RawMessage

var invalidCases = []invalidCase{
	// Syntax and document shape.
	{name: "empty input", json: ``, key: "", want: []string{"config: no JSON value"}},
	{name: "white space only", json: " \n ", key: "", want: []string{"no JSON value"}},
	{name: "syntax error", json: "{\n  \"tempdir\": \"/x\",\n}", key: "", want: []string{"invalid JSON at line 3, column 1"}},
	{name: "truncated", json: `{"tempdir":`, key: "", want: []string{"unexpected end of input"}},
	{name: "trailing data", json: `{} x`, key: "", want: []string{"trailing data", "column 4"}},
	{name: "second object", json: `{}{}`, key: "", want: []string{"trailing data"}},
	{name: "top level array", json: `[{}]`, key: "", want: []string{"top level must be a JSON object, got array"}},
	{name: "top level string", json: `"{}"`, key: "", want: []string{"top level must be a JSON object, got string"}},
	{name: "top level null", json: `null`, key: "", want: []string{"got null"}},
	{name: "too deep", json: `{"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, key: "x" + strings.Repeat("[0]", 63), want: []string{"nested more than 64 levels"}},

	// Unknown and duplicate keys.
	{name: "unknown top-level key", json: `{"replication_spooling_dri":"/x"}`, key: "", want: []string{`config: unknown key "replication_spooling_dri" (top level)`}},
	{name: "unknown key in s3", json: s3(map[string]any{"regoin": "x"}), key: "replication_targets[0].s3", want: []string{`replication_targets[0].s3: unknown key "regoin"`}},
	{name: "unknown key in dir", json: `{"replication_targets":[{"dir":{"path":"/a","mode":1}}]}`, key: "replication_targets[0].dir", want: []string{`unknown key "mode"`}},
	{name: "unknown key in local", json: `{"replication_targets":[{"local":{"directory":"/a","num_shards":1,"capacity":1,"size":2}}]}`, key: "replication_targets[0].local", want: []string{`unknown key "size"`}},
	{name: "unknown key in read_only", json: `{"replication_targets":[{"read_only":{"directory":"/a","x":1}}]}`, key: "replication_targets[0].read_only", want: []string{`unknown key "x"`}},
	{name: "duplicate top-level key", json: `{"tempdir":"/a","tempdir":"/b"}`, key: "", want: []string{`config: duplicate key "tempdir" (top level)`}},
	{name: "duplicate key in target", json: `{"replication_targets":[{"dir":{"path":"/a"}},{"dir":{"path":"/a","path":"/b"}}]}`, key: "replication_targets[1].dir", want: []string{`replication_targets[1].dir: duplicate key "path"`}},
	{name: "duplicate key by escape", json: `{"tempdir":"/a","t\u0065mpdir":"/b"}`, key: "", want: []string{`duplicate key "tempdir"`}},
	{name: "duplicate target kind", json: `{"replication_targets":[{"dir":{"path":"/a"},"dir":{"path":"/b"}}]}`, key: "replication_targets[0]", want: []string{`replication_targets[0]: duplicate key "dir"`}},
	{name: "duplicate key inside unknown key", json: `{"other":{"a b":{"c":1,"c":2}}}`, key: `other["a b"]`, want: []string{`other["a b"]: duplicate key "c"`}},

	// Targets.
	{name: "targets not an array", json: `{"replication_targets":{"dir":{"path":"/a"}}}`, key: "replication_targets", want: []string{"replication_targets: expected an array, got object"}},
	{name: "target not an object", json: `{"replication_targets":["s3"]}`, key: "replication_targets[0]", want: []string{"replication_targets[0]: expected an object, got string"}},
	{name: "null target", json: `{"replication_targets":[{"dir":{"path":"/a"}},null]}`, key: "replication_targets[1]", want: []string{"replication_targets[1]: expected an object, got null"}},
	{name: "unknown target kind", json: `{"replication_targets":[{"gcs":{}}]}`, key: "replication_targets[0]", want: []string{`config: replication_targets[0]: unknown target kind "gcs" (want one of s3, dir, local, read_only)`}},
	{name: "two target kinds", json: `{"replication_targets":[{"s3":{},"dir":{}}]}`, key: "replication_targets[0]", want: []string{"config: replication_targets[0]: a target must have exactly one kind, got 2 (dir, s3)"}},
	{name: "no target kind", json: `{"replication_targets":[{}]}`, key: "replication_targets[0]", want: []string{"exactly one kind, got 0"}},
	{name: "null target body", json: `{"replication_targets":[{"s3":null}]}`, key: "replication_targets[0].s3", want: []string{"replication_targets[0].s3: expected an object, got null"}},
	{name: "target body array", json: `{"replication_targets":[{"dir":["/a"]}]}`, key: "replication_targets[0].dir", want: []string{"expected an object, got array"}},

	// S3 targets.
	{name: "s3 missing region", json: s3(map[string]any{"region": nil}), key: "replication_targets[0].s3", want: []string{`config: replication_targets[0].s3: missing required key "region"`}},
	{name: "s3 missing chunk_bucket", json: s3(map[string]any{"chunk_bucket": nil}), key: "replication_targets[0].s3", want: []string{`missing required key "chunk_bucket"`}},
	{name: "s3 missing manifest_bucket", json: s3(map[string]any{"manifest_bucket": nil}), key: "replication_targets[0].s3", want: []string{`missing required key "manifest_bucket"`}},
	{name: "s3 missing domain_addressing", json: s3(map[string]any{"domain_addressing": nil}), key: "replication_targets[0].s3", want: []string{`missing required key "domain_addressing"`}},
	{name: "s3 null region", json: s3(map[string]any{"region": raw(`null`)}), key: "replication_targets[0].s3.region", want: []string{"replication_targets[0].s3.region: expected a string, got null"}},
	{name: "s3 null domain_addressing", json: s3(map[string]any{"domain_addressing": raw(`null`)}), key: "replication_targets[0].s3.domain_addressing", want: []string{"expected a boolean, got null"}},
	{name: "s3 region number", json: s3(map[string]any{"region": 1}), key: "replication_targets[0].s3.region", want: []string{"replication_targets[0].s3.region: expected a string, got number"}},
	{name: "s3 endpoint boolean", json: s3(map[string]any{"endpoint": true}), key: "replication_targets[0].s3.endpoint", want: []string{"expected a string, got boolean"}},
	{name: "s3 chunk_bucket number in second target", json: `{"replication_targets":[{"dir":{"path":"/a"}},{"s3":{"region":"r","chunk_bucket":7,"manifest_bucket":"m","domain_addressing":true}}]}`, key: "replication_targets[1].s3.chunk_bucket", want: []string{"config: replication_targets[1].s3.chunk_bucket: expected a string, got number"}},
	{name: "s3 manifest_bucket object", json: s3(map[string]any{"manifest_bucket": raw(`{}`)}), key: "replication_targets[0].s3.manifest_bucket", want: []string{"expected a string, got object"}},
	{name: "s3 domain_addressing string", json: s3(map[string]any{"domain_addressing": "false"}), key: "replication_targets[0].s3.domain_addressing", want: []string{"expected a boolean, got string"}},
	{name: "s3 create_buckets_on_demand number", json: s3(map[string]any{"create_buckets_on_demand": 1}), key: "replication_targets[0].s3.create_buckets_on_demand", want: []string{"expected a boolean, got number"}},
	{name: "s3 empty region", json: s3(map[string]any{"region": ""}), key: "replication_targets[0].s3.region", want: []string{"must not be empty"}},
	{name: "s3 endpoint ftp", json: s3(map[string]any{"endpoint": "ftp://host"}), key: "replication_targets[0].s3.endpoint", want: []string{"absolute http or https URL"}},
	{name: "s3 endpoint relative", json: s3(map[string]any{"endpoint": "127.0.0.1:9000"}), key: "replication_targets[0].s3.endpoint", want: []string{"replication_targets[0].s3.endpoint"}},
	{name: "s3 endpoint without host", json: s3(map[string]any{"endpoint": "http:///path"}), key: "replication_targets[0].s3.endpoint", want: []string{"must have a host"}},
	{name: "s3 endpoint with only a port", json: s3(map[string]any{"endpoint": "http://:9000"}), key: "replication_targets[0].s3.endpoint", want: []string{"must have a host"}},
	{name: "s3 endpoint with user info", json: s3(map[string]any{"endpoint": "https://key:secret@s3.example.com"}), key: "replication_targets[0].s3.endpoint", want: []string{"user information"}},
	{name: "s3 endpoint unparsable", json: s3(map[string]any{"endpoint": "http://[::1"}), key: "replication_targets[0].s3.endpoint", want: []string{"invalid URL"}},
	{name: "s3 endpoint with query", json: s3(map[string]any{"endpoint": "http://127.0.0.1:9000/?x=1"}), key: "replication_targets[0].s3.endpoint", want: []string{"must not have a query", `"http://127.0.0.1:9000/?x=REDACTED"`}},
	{name: "s3 endpoint with empty query", json: s3(map[string]any{"endpoint": "http://127.0.0.1:9000/?"}), key: "replication_targets[0].s3.endpoint", want: []string{"must not have a query"}},
	{name: "s3 endpoint port too large", json: s3(map[string]any{"endpoint": "http://127.0.0.1:99999"}), key: "replication_targets[0].s3.endpoint", want: []string{`invalid port "99999"`}},
	{name: "s3 endpoint port zero", json: s3(map[string]any{"endpoint": "http://127.0.0.1:0"}), key: "replication_targets[0].s3.endpoint", want: []string{`invalid port "0"`}},
	{name: "s3 region with a space", json: s3(map[string]any{"region": "us east 1"}), key: "replication_targets[0].s3.region", want: []string{`invalid region "us east 1"`}},
	{name: "s3 region with an underscore", json: s3(map[string]any{"region": "us_east_1"}), key: "replication_targets[0].s3.region", want: []string{"invalid region"}},
	{name: "s3 region with an empty label", json: s3(map[string]any{"region": "a..b"}), key: "replication_targets[0].s3.region", want: []string{"invalid region"}},
	{name: "s3 region label ends with a dash", json: s3(map[string]any{"region": "us-east-"}), key: "replication_targets[0].s3.region", want: []string{"invalid region"}},
	{name: "s3 region shorthand without a domain", json: s3(map[string]any{"region": "minio."}), key: "replication_targets[0].s3.region", want: []string{`invalid region "minio."`, `region "minio" at https://`, "must have a host"}},
	{name: "s3 region shorthand with a bad port", json: s3(map[string]any{"region": "minio.localhost:99999"}), key: "replication_targets[0].s3.region", want: []string{`invalid region "minio.localhost:99999"`, `invalid port "99999"`}},
	{name: "s3 region shorthand with a query", json: s3(map[string]any{"region": "minio.localhost/?token=TopSecret"}), key: "replication_targets[0].s3.region", want: []string{"must not have a query"}},
	{name: "s3 region shorthand with user information", json: s3(map[string]any{"region": "minio.key:secret@localhost"}), key: "replication_targets[0].s3.region", want: []string{"must not contain user information"}},
	{name: "s3 region shorthand with a bad name", json: s3(map[string]any{"region": "mi_nio.localhost"}), key: "replication_targets[0].s3.region", want: []string{`"mi_nio" is not a region name`}},
	{name: "s3 region shorthand with a bad host", json: s3(map[string]any{"region": "minio.local_host"}), key: "replication_targets[0].s3.region", want: []string{`"local_host" is not a host name`}},
	{name: "s3 bucket IP address", json: s3(map[string]any{"chunk_bucket": "192.168.5.4"}), key: "replication_targets[0].s3.chunk_bucket", want: []string{"IP address"}},
	{name: "s3 bucket shaped like an IP address", json: s3(map[string]any{"chunk_bucket": "999.01.0.0"}), key: "replication_targets[0].s3.chunk_bucket", want: []string{"IP address"}},
	{name: "s3 bucket too short", json: s3(map[string]any{"manifest_bucket": "ab"}), key: "replication_targets[0].s3.manifest_bucket", want: []string{"3 to 63 characters"}},
	{name: "s3 bucket too long even for legacy rules", json: s3(map[string]any{"manifest_bucket": strings.Repeat("a", 256)}), key: "replication_targets[0].s3.manifest_bucket", want: []string{"3 to 63 characters long (255 for legacy names)"}},
	{name: "s3 bucket leading dash", json: s3(map[string]any{"chunk_bucket": "-chunks"}), key: "replication_targets[0].s3.chunk_bucket", want: []string{"must start with a letter or digit"}},
	{name: "s3 bucket leading underscore", json: s3(map[string]any{"chunk_bucket": "_chunks"}), key: "replication_targets[0].s3.chunk_bucket", want: []string{"must start with a letter or digit"}},
	{name: "s3 bucket leading dot", json: s3(map[string]any{"chunk_bucket": ".chunks"}), key: "replication_targets[0].s3.chunk_bucket", want: []string{"must start with a letter or digit"}},
	{name: "s3 bucket colon", json: s3(map[string]any{"chunk_bucket": "my:chunks"}), key: "replication_targets[0].s3.chunk_bucket", want: []string{"only lowercase letters"}},
	{name: "s3 bucket slash", json: s3(map[string]any{"chunk_bucket": "my/chunks"}), key: "replication_targets[0].s3.chunk_bucket", want: []string{"only lowercase letters"}},
	{name: "s3 bucket non-ASCII", json: s3(map[string]any{"chunk_bucket": "chünks"}), key: "replication_targets[0].s3.chunk_bucket", want: []string{"only lowercase letters"}},

	// Directory targets.
	{name: "dir missing path", json: `{"replication_targets":[{"dir":{}}]}`, key: "replication_targets[0].dir", want: []string{`replication_targets[0].dir: missing required key "path"`}},
	{name: "dir relative path", json: `{"replication_targets":[{"dir":{"path":"replica"}}]}`, key: "replication_targets[0].dir.path", want: []string{"replication_targets[0].dir.path: must be an absolute path"}},
	{name: "dir empty path", json: `{"replication_targets":[{"dir":{"path":""}}]}`, key: "replication_targets[0].dir.path", want: []string{"must be an absolute path"}},
	{name: "dir path number", json: `{"replication_targets":[{"dir":{"path":1}}]}`, key: "replication_targets[0].dir.path", want: []string{"expected a string, got number"}},
	{name: "dir path with NUL", json: `{"replication_targets":[{"dir":{"path":"/a\u0000b"}}]}`, key: "replication_targets[0].dir.path", want: []string{"NUL"}},
	{name: "local missing directory", json: `{"replication_targets":[{"local":{"num_shards":1,"capacity":1}}]}`, key: "replication_targets[0].local", want: []string{`missing required key "directory"`}},
	{name: "local missing num_shards", json: `{"replication_targets":[{"local":{"directory":"/c","capacity":1}}]}`, key: "replication_targets[0].local", want: []string{`missing required key "num_shards"`}},
	{name: "local missing capacity", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1}}]}`, key: "replication_targets[0].local", want: []string{`missing required key "capacity"`}},
	{name: "local null capacity", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1,"capacity":null}}]}`, key: "replication_targets[0].local.capacity", want: []string{"expected a number, got null"}},
	{name: "local relative directory", json: `{"replication_targets":[{"local":{"directory":"c","num_shards":1,"capacity":1}}]}`, key: "replication_targets[0].local.directory", want: []string{"must be an absolute path"}},
	{name: "local zero num_shards", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":0,"capacity":1}}]}`, key: "replication_targets[0].local.num_shards", want: []string{"must be at least 1"}},
	{name: "local zero capacity", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1,"capacity":0}}]}`, key: "replication_targets[0].local.capacity", want: []string{"must be at least 1"}},
	{name: "local largest uint64 capacity", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1,"capacity":18446744073709551615}}]}`, key: "replication_targets[0].local.capacity", want: []string{"too large (the maximum is 140737488355328)"}},
	{name: "local capacity just too large", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1,"capacity":140737488355329}}]}`, key: "replication_targets[0].local.capacity", want: []string{"too large"}},
	{name: "local fractional num_shards", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1.5,"capacity":1}}]}`, key: "replication_targets[0].local.num_shards", want: []string{"expected an integer, got 1.5"}},
	{name: "local fractional exponent", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":15e-1,"capacity":1}}]}`, key: "replication_targets[0].local.num_shards", want: []string{"expected an integer, got 15e-1"}},
	{name: "local tiny exponent", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1e-99999999999999999999,"capacity":1}}]}`, key: "replication_targets[0].local.num_shards", want: []string{"expected an integer"}},
	{name: "local negative capacity", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1,"capacity":-5}}]}`, key: "replication_targets[0].local.capacity", want: []string{"expected a non-negative integer, got -5"}},
	{name: "local num_shards too large", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":4294967296,"capacity":1}}]}`, key: "replication_targets[0].local.num_shards", want: []string{"too large"}},
	{name: "local capacity too large", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1,"capacity":18446744073709551616}}]}`, key: "replication_targets[0].local.capacity", want: []string{"too large"}},
	{name: "local capacity huge exponent", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1,"capacity":1e99999999999999999999}}]}`, key: "replication_targets[0].local.capacity", want: []string{"too large"}},
	{name: "local capacity string", json: `{"replication_targets":[{"local":{"directory":"/c","num_shards":1,"capacity":"10"}}]}`, key: "replication_targets[0].local.capacity", want: []string{"expected a number, got string"}},
	{name: "read_only missing directory", json: `{"replication_targets":[{"read_only":{"num_shards":2}}]}`, key: "replication_targets[0].read_only", want: []string{`missing required key "directory"`}},
	{name: "read_only relative directory", json: `{"replication_targets":[{"read_only":{"directory":"./seed"}}]}`, key: "replication_targets[0].read_only.directory", want: []string{"must be an absolute path"}},
	{name: "read_only negative num_shards", json: `{"replication_targets":[{"read_only":{"directory":"/s","num_shards":-1}}]}`, key: "replication_targets[0].read_only.num_shards", want: []string{"non-negative"}},

	// Top-level values.
	{name: "make_default string", json: `{"make_default":"true"}`, key: "make_default", want: []string{"config: make_default: expected a boolean, got string"}},
	{name: "tempdir number", json: `{"tempdir":5}`, key: "tempdir", want: []string{"tempdir: expected a string, got number"}},
	{name: "tempdir relative with NUL", json: `{"tempdir":"t\u0000mp"}`, key: "tempdir", want: []string{"tempdir: must not contain a NUL byte"}},
	{name: "spooling dir boolean", json: `{"replication_spooling_dir":false}`, key: "replication_spooling_dir", want: []string{"replication_spooling_dir: expected a string, got boolean"}},
	{name: "spooling dir relative", json: `{"replication_spooling_dir":"spool"}`, key: "replication_spooling_dir", want: []string{"must be an absolute path"}},
	{name: "spooling dir with NUL", json: `{"replication_spooling_dir":"/sp\u0000ol"}`, key: "replication_spooling_dir", want: []string{"NUL"}},
	{name: "permissions string", json: `{"replication_spooling_dir_permissions":"0755"}`, key: "replication_spooling_dir_permissions", want: []string{"expected a number", "got string", "write 448 for 0o700"}},
	{name: "permissions too large", json: `{"replication_spooling_dir_permissions":4096}`, key: "replication_spooling_dir_permissions", want: []string{"from 0 to 4095", "got 4096"}},
	{name: "permissions fraction", json: `{"replication_spooling_dir_permissions":448.5}`, key: "replication_spooling_dir_permissions", want: []string{"got 448.5"}},
	{name: "permissions negative", json: `{"replication_spooling_dir_permissions":-448}`, key: "replication_spooling_dir_permissions", want: []string{"got -448"}},
	{name: "pack_chunks zero", json: `{"pack_chunks":0}`, key: "pack_chunks", want: []string{"from 1 (no packs) to 1024", "got 0"}},
	{name: "pack_chunks too large", json: `{"pack_chunks":1025}`, key: "pack_chunks", want: []string{"from 1 (no packs) to 1024", "got 1025"}},
	{name: "pack_chunks fraction", json: `{"pack_chunks":2.5}`, key: "pack_chunks", want: []string{"got 2.5"}},
	{name: "capture_memory_mib zero", json: `{"capture_memory_mib":0}`, key: "capture_memory_mib", want: []string{"from 1 to 65536", "got 0", "default of 64"}},
	{name: "capture_memory_mib negative", json: `{"capture_memory_mib":-5}`, key: "capture_memory_mib", want: []string{"got -5"}},
	{name: "manifest_pace_ms zero", json: `{"manifest_pace_ms":0}`, key: "manifest_pace_ms", want: []string{"from 1 to 60000", "got 0", "default of 500"}},
	{name: "manifest_pace_ms too large", json: `{"manifest_pace_ms":60001}`, key: "manifest_pace_ms", want: []string{"got 60001"}},
	{name: "manifest_pace_ms fraction", json: `{"manifest_pace_ms":0.5}`, key: "manifest_pace_ms", want: []string{"from 1 to 60000"}},
	{name: "pack_chunks string", json: `{"pack_chunks":"64"}`, key: "pack_chunks", want: []string{"expected a number, got string"}},
	{name: "rate string", json: `{"max_requests_per_second":"30"}`, key: "max_requests_per_second", want: []string{"expected a number, got string"}},
	{name: "rate zero", json: `{"max_requests_per_second":0}`, key: "max_requests_per_second", want: []string{"must be greater than 0"}},
	{name: "rate negative", json: `{"max_requests_per_second":-1}`, key: "max_requests_per_second", want: []string{"must be greater than 0"}},
	{name: "rate out of range", json: `{"max_requests_per_second":1e400}`, key: "max_requests_per_second", want: []string{"out of range"}},

	// Snapshot loading policy.
	{name: "policy unknown string", json: `{"snapshot_loading_policy":"lazy"}`, key: "snapshot_loading_policy", want: []string{`snapshot_loading_policy: unknown policy "lazy"`}},
	{name: "policy partial string", json: `{"snapshot_loading_policy":"partial"}`, key: "snapshot_loading_policy", want: []string{"must be written as an object"}},
	{name: "policy unknown object", json: `{"snapshot_loading_policy":{"lazy":null}}`, key: "snapshot_loading_policy", want: []string{`unknown policy "lazy"`}},
	{name: "policy two keys", json: `{"snapshot_loading_policy":{"eager":null,"default":null}}`, key: "snapshot_loading_policy", want: []string{"exactly one key, got 2"}},
	{name: "policy empty object", json: `{"snapshot_loading_policy":{}}`, key: "snapshot_loading_policy", want: []string{"exactly one key, got 0"}},
	{name: "policy number", json: `{"snapshot_loading_policy":1}`, key: "snapshot_loading_policy", want: []string{"expected a string or an object, got number"}},
	{name: "policy eager with value", json: `{"snapshot_loading_policy":{"eager":{}}}`, key: "snapshot_loading_policy.eager", want: []string{"snapshot_loading_policy.eager: expected null, got object"}},
	{name: "policy partial null", json: `{"snapshot_loading_policy":{"partial":null}}`, key: "snapshot_loading_policy.partial", want: []string{"expected an object, got null"}},
	{name: "policy partial unknown key", json: `{"snapshot_loading_policy":{"partial":{"min":1,"limit":2}}}`, key: "snapshot_loading_policy.partial", want: []string{`snapshot_loading_policy.partial: unknown key "limit"`}},
	{name: "policy partial fractional min", json: `{"snapshot_loading_policy":{"partial":{"min":1.5}}}`, key: "snapshot_loading_policy.partial.min", want: []string{"snapshot_loading_policy.partial.min: expected an integer"}},
	{name: "policy partial max string", json: `{"snapshot_loading_policy":{"partial":{"max":"8"}}}`, key: "snapshot_loading_policy.partial.max", want: []string{"expected a number, got string"}},
}

func TestParseInvalid(t *testing.T) {
	for _, tc := range invalidCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.json))
			if err == nil {
				t.Fatalf("Parse()=%+v, nil, want an error containing %q", got, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Parse()=%v, want an error containing %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "config: ") {
				t.Errorf("Parse()=%v, want an error starting with %q", err, "config: ")
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse()=%T, want %T", err, e)
			}
			if e.Key != tc.key {
				t.Errorf("Parse() Key=%q, want %q", e.Key, tc.key)
			}
			if tc.key != "" && !strings.Contains(err.Error(), tc.key) {
				t.Errorf("Parse()=%v, want the key path %q in the message", err, tc.key)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid)=false, want true", err)
			}
			if !reflect.DeepEqual(got, Config{}) {
				t.Errorf("Parse()=%+v, want the zero Config on error", got)
			}
		})
	}
}

func TestErrorMessage(t *testing.T) {
	tests := []struct {
		name string
		err  *Error
		want string
	}{
		{name: "with key", err: &Error{Key: "replication_targets[0].s3.region", Msg: "must not be empty"}, want: "config: replication_targets[0].s3.region: must not be empty"},
		{name: "without key", err: &Error{Msg: "no JSON value"}, want: "config: no JSON value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("Error()=%q, want %q", got, tc.want)
			}
			if !errors.Is(tc.err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid)=false, want true", tc.err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	valid := func() S3Target {
		return S3Target{Region: "r", ChunkBucket: "chunks", ManifestBucket: "manifests"}
	}
	tests := []struct {
		name string
		cfg  Config
		key  string // "" and no want: valid
		want string
	}{
		{name: "zero", cfg: Config{}},
		{name: "example", cfg: verneuilExampleConfig},
		{name: "target without kind", cfg: Config{ReplicationTargets: []Target{{}}}, key: "replication_targets[0]", want: "exactly one kind, got 0"},
		{name: "target with two kinds", cfg: Config{ReplicationTargets: []Target{{Dir: &DirTarget{Path: "/a"}}, {S3: &S3Target{}, ReadOnly: &ReadOnlyTarget{}}}}, key: "replication_targets[1]", want: "exactly one kind, got 2 (read_only, s3)"},
		{name: "s3 without region", cfg: Config{ReplicationTargets: []Target{{S3: &S3Target{ChunkBucket: "abc", ManifestBucket: "abc"}}}}, key: "replication_targets[0].s3.region", want: "must not be empty"},
		{name: "s3 bad endpoint", cfg: Config{ReplicationTargets: []Target{{S3: func() *S3Target { t := valid(); t.Endpoint = "s3.example.com"; return &t }()}}}, key: "replication_targets[0].s3.endpoint", want: "absolute http or https URL"},
		{name: "s3 empty bucket", cfg: Config{ReplicationTargets: []Target{{S3: func() *S3Target { t := valid(); t.ManifestBucket = ""; return &t }()}}}, key: "replication_targets[0].s3.manifest_bucket", want: "3 to 63"},
		{name: "local zero shards", cfg: Config{ReplicationTargets: []Target{{Local: &LocalTarget{Directory: "/c", Capacity: 1}}}}, key: "replication_targets[0].local.num_shards", want: "at least 1"},
		{name: "local capacity 2^64-1", cfg: Config{ReplicationTargets: []Target{{Local: &LocalTarget{Directory: "/c", NumShards: 1, Capacity: math.MaxUint64}}}}, key: "replication_targets[0].local.capacity", want: "too large"},
		{name: "local largest capacity", cfg: Config{ReplicationTargets: []Target{{Local: &LocalTarget{Directory: "/c", NumShards: 7, Capacity: MaxLocalCapacity}}}}},
		{name: "s3 endpoint with query", cfg: Config{ReplicationTargets: []Target{{S3: func() *S3Target { t := valid(); t.Endpoint = "https://s3.example.com?a=b"; return &t }()}}}, key: "replication_targets[0].s3.endpoint", want: "must not have a query"},
		{name: "s3 bad region", cfg: Config{ReplicationTargets: []Target{{S3: func() *S3Target { t := valid(); t.Region = "eu/west"; return &t }()}}}, key: "replication_targets[0].s3.region", want: "invalid region"},
		{name: "permissions too large", cfg: Config{ReplicationSpoolingDirPermissions: 0o10000}, key: "replication_spooling_dir_permissions", want: "more than 4095"},
		{name: "negative rate", cfg: Config{MaxRequestsPerSecond: -1}, key: "max_requests_per_second", want: "positive and finite"},
		{name: "pack_chunks too large", cfg: Config{PackChunks: 5000}, key: "pack_chunks", want: "from 1 to 1024"},
		{name: "capture_memory_mib too large", cfg: Config{CaptureMemoryMiB: 1 << 20}, key: "capture_memory_mib", want: "from 1 to 65536 MiB"},
		{name: "manifest_pace_ms too large", cfg: Config{ManifestPaceMs: 1 << 20}, key: "manifest_pace_ms", want: "from 1 to 60000 ms"},
		{name: "NaN rate", cfg: Config{MaxRequestsPerSecond: math.NaN()}, key: "max_requests_per_second", want: "positive and finite"},
		{name: "infinite rate", cfg: Config{MaxRequestsPerSecond: math.Inf(1)}, key: "max_requests_per_second", want: "positive and finite"},
		{name: "unknown policy", cfg: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "lazy"}}, key: "snapshot_loading_policy", want: `unknown policy "lazy"`},
		{name: "bounds without partial", cfg: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "eager", Max: 3}}, key: "snapshot_loading_policy", want: "only allowed with the \"partial\" policy"},
		{name: "empty policy kind", cfg: Config{SnapshotLoadingPolicy: LoadingPolicy{}}},
		{name: "partial policy", cfg: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "partial", Min: 9, Max: 1}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Errorf("Validate()=%v, want nil", err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Validate()=%v, want an *Error containing %q", err, tc.want)
			}
			if e.Key != tc.key || !strings.Contains(e.Msg, tc.want) {
				t.Errorf("Validate()=%v, want key %q and a message containing %q", err, tc.key, tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid)=false, want true", err)
			}
		})
	}
}

// TestEndpointErrorsHideSecrets: an endpoint the check rejects is quoted
// without its user information, query values or fragment, whether it
// parses or not.
func TestEndpointErrorsHideSecrets(t *testing.T) {
	for _, tc := range []struct {
		name, endpoint, want string
	}{
		{"bad escape in the password", "http://AKIAUSER:TopSecret%zz@s3.example.com", `invalid URL "http://REDACTED@s3.example.com": invalid %-escape`},
		{"bad escape in the query", "http://s3.example.com/?X-Amz-Signature=TopSecret%zz", `must not have a query, got "http://s3.example.com/?X-Amz-Signature=REDACTED"`},
		{"bad port after user information", "http://AKIAUSER:TopSecret@s3.example.com:x", `invalid URL "http://REDACTED@s3.example.com:x"`},
		{"user information", "https://AKIAUSER:TopSecret@s3.example.com", "must not contain user information"},
		{"query", "https://s3.example.com/?token=TopSecret&x", `must not have a query, got "https://s3.example.com/?token=REDACTED&REDACTED"`},
		{"query and fragment", "https://s3.example.com/p?TopSecret#TopSecret", `must not have a query, got "https://s3.example.com/p?REDACTED#REDACTED"`},
		{"other scheme with user information", "ftp://AKIAUSER:TopSecret@host", "must not contain user information"},
		{"other scheme, password in the path", "ftp:AKIAUSER:TopSecret@host", "got another scheme"},
		{"no scheme, user information", "AKIAUSER:TopSecret@host:9000", "got another scheme"},
		{"relative, user information", "AKIAUSER@host:9000/x", `invalid URL "REDACTED@host:9000/x"`},
		{"no host, user information", "http://AKIAUSER:TopSecret@", "must not contain user information"},
		{"key and secret alone", "AKIAUSER:TopSecret", "got another scheme"},
		{"no slashes", "http:AKIAUSER:TopSecret", "must have a host (http://HOST), got no '//'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkRedacted(t, s3(map[string]any{"endpoint": tc.endpoint}), tc.want)
		})
	}
	// A region without an endpoint stands for one (region.domain), and
	// is quoted the same way.
	for _, tc := range []struct {
		name, region, want string
	}{
		{"region shorthand with user information", "minio.AKIAUSER:TopSecret@host", `invalid region "minio.REDACTED@host"`},
		{"region shorthand with a query", "minio.host/?token=TopSecret", `invalid region "minio.host/?token=REDACTED"`},
		{"region shorthand with a bad escape", "minio.AKIAUSER:TopSecret%zz@host", `invalid region "minio.REDACTED@host"`},
		{"user information before the first dot", "AKIAUSER:TopSecret@host.example", `invalid region "REDACTED@host.example"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkRedacted(t, s3(map[string]any{"region": tc.region}), tc.want)
		})
	}
}

func TestValidateCleansDirPath(t *testing.T) {
	shared := &DirTarget{Path: "/srv//replica/"}
	cfg := Config{ReplicationTargets: []Target{{Dir: shared}}}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate()=%v, want nil", err)
	}
	if got, want := cfg.ReplicationTargets[0].Dir.Path, "/srv/replica"; got != want {
		t.Errorf("Validate() Path=%q, want %q", got, want)
	}
	if got, want := shared.Path, "/srv//replica/"; got != want {
		t.Errorf("Validate() wrote through the pointer: Path=%q, want %q", got, want)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("good.json", verneuilExample)
	bad := write("bad.json", `{"replication_targets":[{"s3":{"region":5}}]}`)
	notJSON := write("syntax.json", "{\n")
	empty := write("empty.json", "")
	missing := filepath.Join(dir, "missing.json")

	tests := []struct {
		name   string
		value  string
		want   Config
		errHas []string // nil: no error
		errIs  error
		errNot string // the error must not contain this, if not ""
	}{
		{name: "empty string", value: "", want: Config{}},
		{name: "white space", value: " \t\n ", want: Config{}},
		{name: "inline JSON", value: verneuilExample, want: verneuilExampleConfig},
		{name: "inline JSON with spaces", value: ` {"make_default": true} `, want: Config{MakeDefault: true}},
		{name: "inline invalid JSON", value: `{"make_default": 1}`, errHas: []string{"config: make_default: expected a boolean, got number"}, errIs: ErrInvalid, errNot: "@"},
		{name: "path without at sign", value: "/etc/boule.json", errHas: []string{"invalid JSON", `"@" and its path: @/etc/boule.json`}, errIs: ErrInvalid},
		{name: "relative path without at sign", value: " boule.json\n", errHas: []string{"@boule.json"}, errIs: ErrInvalid},
		{name: "JSON syntax error", value: `{"make_default": true`, errIs: ErrInvalid, errHas: []string{"config: "}, errNot: "@"},
		{name: "file", value: "@" + good, want: verneuilExampleConfig},
		{name: "missing file", value: "@" + missing, errHas: []string{"config: ", missing, "no such file"}, errIs: fs.ErrNotExist},
		{name: "file with bad JSON", value: "@" + bad, errHas: []string{"config: " + bad + ": replication_targets[0].s3.region: expected a string, got number"}, errIs: ErrInvalid},
		{name: "file with syntax error", value: "@" + notJSON, errHas: []string{notJSON, "invalid JSON"}, errIs: ErrInvalid},
		{name: "empty file", value: "@" + empty, errHas: []string{empty, "no JSON value"}, errIs: ErrInvalid},
		{name: "directory", value: "@" + dir, errHas: []string{"config: ", dir}},
		{name: "at sign alone", value: "@", errHas: []string{"config: ", "must be followed by the path"}, errIs: ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Load(tc.value)
			if tc.errHas == nil {
				if err != nil {
					t.Fatalf("Load()=%v, want nil error", err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("Load()=%+v, want %+v", got, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Load()=%+v, nil, want an error containing %q", got, tc.errHas)
			}
			for _, w := range tc.errHas {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load()=%v, want an error containing %q", err, w)
				}
			}
			if tc.errIs != nil && !errors.Is(err, tc.errIs) {
				t.Errorf("errors.Is(%v, %v)=false, want true", err, tc.errIs)
			}
			if tc.errNot != "" && strings.Contains(err.Error(), tc.errNot) {
				t.Errorf("Load()=%v, want an error without %q", err, tc.errNot)
			}
		})
	}
}

// TestLoadFileErrorKey checks that a file's parse error still exposes
// the *Error with the key path.
func TestLoadFileErrorKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(path, []byte(`{"tempdir":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load("@" + path)
	var e *Error
	if !errors.As(err, &e) || e.Key != "tempdir" {
		t.Errorf("Load()=%v, want an *Error with Key %q", err, "tempdir")
	}
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := mustParse(t, tc.json)
			cfg.Logger = slog.Default() // Not part of the JSON form.
			got, out := reparse(t, cfg)
			cfg.Logger = nil
			if !reflect.DeepEqual(got, cfg) {
				t.Errorf("Parse(%s)=%+v, want %+v", out, got, cfg)
			}
		})
	}
}

func TestMarshalJSON(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "zero", cfg: Config{}, want: `{"make_default":false,"replication_targets":[]}`},
		{
			name: "verneuil example",
			cfg:  verneuilExampleConfig,
			want: `{"make_default":true,"replication_spooling_dir":"/tmp/verneuil/","replication_targets":[` +
				`{"s3":{"region":"minio","endpoint":"http://127.0.0.1:7777","chunk_bucket":"chunks","manifest_bucket":"manifests","domain_addressing":false,"create_buckets_on_demand":true}},` +
				`{"local":{"directory":"/tmp/verneuil-cache/","num_shards":128,"capacity":10000}}]}`,
		},
		{
			name: "all top-level keys",
			cfg: Config{
				Tempdir:                           "/t",
				ReplicationSpoolingDirPermissions: 0o755,
				ReplicationTargets:                []Target{{Dir: &DirTarget{Path: "/d"}}, {ReadOnly: &ReadOnlyTarget{Directory: "/r"}}},
				SnapshotLoadingPolicy:             LoadingPolicy{Kind: "partial", Max: 4},
				MaxRequestsPerSecond:              2.5,
				Logger:                            slog.Default(),
			},
			want: `{"make_default":false,"tempdir":"/t","replication_spooling_dir_permissions":493,` +
				`"replication_targets":[{"dir":{"path":"/d"}},{"read_only":{"directory":"/r","num_shards":0}}],` +
				`"snapshot_loading_policy":{"partial":{"max":4}},"max_requests_per_second":2.5}`,
		},
		{name: "eager policy", cfg: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "eager"}}, want: `{"make_default":false,"replication_targets":[],"snapshot_loading_policy":{"eager":null}}`},
		{name: "default policy", cfg: Config{SnapshotLoadingPolicy: LoadingPolicy{Kind: "default"}}, want: `{"make_default":false,"replication_targets":[],"snapshot_loading_policy":"default"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.cfg.MarshalJSON()
			if err != nil {
				t.Fatalf("MarshalJSON()=%v, want nil error", err)
			}
			if string(got) != tc.want {
				t.Errorf("MarshalJSON()=%s, want %s", got, tc.want)
			}
			back, err := Parse(got)
			if err != nil {
				t.Fatalf("Parse(%s)=%v, want nil error", got, err)
			}
			want := tc.cfg
			want.Logger = nil
			if !reflect.DeepEqual(back, want) {
				t.Errorf("Parse(%s)=%+v, want %+v", got, back, want)
			}
		})
	}
}

func TestUnmarshalJSON(t *testing.T) {
	logger := slog.Default()
	tests := []struct {
		name    string
		json    string
		want    Config
		wantErr string
	}{
		{name: "valid", json: `{"wrapper":` + verneuilExample + `}`, want: Config{MakeDefault: true, ReplicationSpoolingDir: "/tmp/verneuil/", ReplicationTargets: verneuilExampleConfig.ReplicationTargets, Logger: logger}},
		{name: "null keeps the config", json: `{"wrapper":null}`, want: Config{Tempdir: "/before", Logger: logger}},
		{name: "strict", json: `{"wrapper":{"tempdir":"/a","tempdir":"/b"}}`, wantErr: `duplicate key "tempdir"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var v struct{ Wrapper Config }
			v.Wrapper = Config{Tempdir: "/before", Logger: logger}
			if checkErr(t, "json.Unmarshal()", json.Unmarshal([]byte(tc.json), &v), tc.wantErr) {
				return
			}
			if !reflect.DeepEqual(v.Wrapper, tc.want) {
				t.Errorf("json.Unmarshal()=%+v, want %+v", v.Wrapper, tc.want)
			}
		})
	}
}

func TestPermissions(t *testing.T) {
	tests := []struct {
		name  string
		perms uint32
		want  os.FileMode
	}{
		{name: "zero means 0700", perms: 0, want: 0o700},
		{name: "ORed with 0700", perms: 0o055, want: 0o755},
		{name: "group readable", perms: 0o750, want: 0o750},
		{name: "special bits dropped", perms: 0o7777, want: 0o777},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{ReplicationSpoolingDirPermissions: tc.perms}
			if got := cfg.Permissions(); got != tc.want {
				t.Errorf("Permissions()=%v, want %v", got, tc.want)
			}
		})
	}
}

func TestRate(t *testing.T) {
	tests := []struct {
		name string
		rate float64
		want float64
	}{
		{name: "zero means default", rate: 0, want: DefaultMaxRequestsPerSecond},
		{name: "explicit", rate: 5, want: 5},
		{name: "fractional", rate: 0.5, want: 0.5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{MaxRequestsPerSecond: tc.rate}
			if got := cfg.Rate(); got != tc.want {
				t.Errorf("Rate()=%v, want %v", got, tc.want)
			}
		})
	}
	if DefaultMaxRequestsPerSecond != 30 || DefaultBurst != 100 {
		t.Errorf("defaults=%v/%v, want 30/100", DefaultMaxRequestsPerSecond, DefaultBurst)
	}
}

func TestKind(t *testing.T) {
	tests := []struct {
		name   string
		target Target
		want   string
	}{
		{name: "s3", target: Target{S3: &S3Target{}}, want: "s3"},
		{name: "dir", target: Target{Dir: &DirTarget{}}, want: "dir"},
		{name: "local", target: Target{Local: &LocalTarget{}}, want: "local"},
		{name: "read_only", target: Target{ReadOnly: &ReadOnlyTarget{}}, want: "read_only"},
		{name: "none", target: Target{}, want: ""},
		{name: "several", target: Target{Dir: &DirTarget{}, ReadOnly: &ReadOnlyTarget{}}, want: "dir"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.target.Kind(); got != tc.want {
				t.Errorf("Kind()=%q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseUint(t *testing.T) {
	tests := []struct {
		num     string
		limit   uint64
		want    uint64
		wantErr string
	}{
		{num: "0", limit: 10, want: 0},
		{num: "-0", limit: 10, want: 0},
		{num: "0.000e5", limit: 10, want: 0},
		{num: "0e99999999999999999999", limit: 10, want: 0},
		{num: "10", limit: 10, want: 10},
		{num: "11", limit: 10, wantErr: "too large"},
		{num: "1.0", limit: 10, want: 1},
		{num: "1.25e2", limit: 1000, want: 125},
		{num: "12500E-2", limit: 1000, want: 125},
		{num: "1.255e2", limit: 1000, wantErr: "expected an integer"},
		{num: "-1e0", limit: 10, wantErr: "non-negative"},
		{num: "1e20", limit: math.MaxUint64, wantErr: "too large"},
		{num: "1e19", limit: math.MaxUint64, want: 1e19},
	}
	for _, tc := range tests {
		t.Run(tc.num, func(t *testing.T) {
			got, msg := parseUint(tc.num, tc.limit)
			if tc.wantErr != "" {
				if !strings.Contains(msg, tc.wantErr) {
					t.Errorf("parseUint()=%d, %q, want a message containing %q", got, msg, tc.wantErr)
				}
				return
			}
			if msg != "" || got != tc.want {
				t.Errorf("parseUint()=%d, %q, want %d", got, msg, tc.want)
			}
		})
	}
}

// reparse marshals cfg to JSON and parses that, failing the test on an
// error; it returns what Parse made of the JSON, and the JSON.
func reparse(t testing.TB, cfg Config) (Config, []byte) {
	t.Helper()
	out, err := json.Marshal(cfg)
	if err != nil {
		t.Fatalf("json.Marshal()=%v, want nil error", err)
	}
	got, err := Parse(out)
	if err != nil {
		t.Fatalf("Parse(%s)=%v, want nil error", out, err)
	}
	return got, out
}

// checkErr fails the test unless err, what call returned, contains
// wantErr, or is nil when wantErr is empty. It reports whether an error
// was wanted, which leaves nothing else to check.
func checkErr(t testing.TB, call string, err error, wantErr string) bool {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("%s=%v, want an error containing %q", call, err, wantErr)
		}
		return true
	}
	if err != nil {
		t.Fatalf("%s=%v, want nil error", call, err)
	}
	return false
}

// mustParse parses js, failing the test on an error.
func mustParse(t *testing.T, js string) Config {
	t.Helper()
	cfg, err := Parse([]byte(js))
	if err != nil {
		t.Fatalf("Parse()=%v, want nil error", err)
	}
	return cfg
}

// checkRedacted asserts that Parse rejects js with a message containing
// want, and that the message shows no part of the secrets in js.
func checkRedacted(t *testing.T, js, want string) {
	t.Helper()
	_, err := Parse([]byte(js))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Parse()=%v, want an error containing %q", err, want)
	}
	for _, secret := range []string{"topsecret", "akiauser", "%zz"} {
		if strings.Contains(strings.ToLower(err.Error()), secret) {
			t.Errorf("Parse()=%v: the message contains %q", err, secret)
		}
	}
}
