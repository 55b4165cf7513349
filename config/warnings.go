package config

import "fmt"

// Warnings returns what is valid in c but likely to fail, one message per
// problem, for the programs that load c to log: S3 bucket names that only
// S3's legacy rules allow, such as the "verneuil_chunks" of Verneuil's
// examples. [Parse] accepts them because AWS still serves such buckets;
// most other stores refuse them. Warnings makes no request and reads no
// file; it returns nil when there is nothing to say.
func (c Config) Warnings() []string {
	var out []string
	for i, t := range c.ReplicationTargets {
		if t.S3 == nil {
			continue
		}
		path := joinKey(joinIndex("replication_targets", i), kindS3)
		for _, b := range []struct{ key, name string }{
			{"chunk_bucket", t.S3.ChunkBucket},
			{"manifest_bucket", t.S3.ManifestBucket},
		} {
			if checkBucket(b.name) != "" {
				continue // invalid: Validate says so
			}
			if why := legacyBucket(b.name); why != "" {
				out = append(out, fmt.Sprintf(
					"config: %s: %q is a legacy S3 bucket name (%s): only buckets created in US East (N. Virginia) before March 2018 can have one, and they are reached path-style; MinIO and other stores that follow today's rules refuse it",
					joinKey(path, b.key), b.name, why))
			}
		}
	}
	return out
}
