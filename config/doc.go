// Package config parses and validates Boule's configuration.
//
// The configuration is a JSON object that uses the same key names as
// Verneuil's, so a Verneuil configuration file can be handed to Boule
// unchanged. Entry points read it from the environment variable named
// by [EnvVar] (BOULE_CONFIG), or Verneuil's [LegacyEnvVar]
// (VERNEUIL_CONFIG) when that is unset, through [FromEnv], and pass the
// value to [Load]; this package never reads the environment itself. The
// value is either the JSON document itself or "@" followed by the path
// of a file that holds it. Values that are valid but likely to fail,
// such as S3 bucket names only S3's legacy rules allow, are reported by
// [Config.Warnings] for the entry points to log.
//
// Parsing is strict: unknown keys, duplicate keys, values of the wrong
// JSON type, fractional or negative numbers where an integer is wanted,
// and data after the top-level object are all errors. Every error
// returned by [Parse] is an [*Error] whose Key is the full path of the
// offending value, such as
//
//	config: replication_targets[1].s3.chunk_bucket: expected a string, got number
//
// and every such error matches [ErrInvalid] with errors.Is.
//
// [Config.MarshalJSON] writes a configuration back in canonical form,
// with Verneuil's key names, so that a process can pass its
// configuration on to a child (for example the sqlite3 shell). Its
// output parses back to an equal Config.
//
// Credentials are never part of the configuration: S3 credentials come
// only from the AWS SDK's default chain. See doc/CONFIG.md for the
// reference of every key.
package config
