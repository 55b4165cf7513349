package config

import (
	"log/slog"
	"strings"
	"sync/atomic"
)

// legacyNoted is set once FromEnv has said that it used VERNEUIL_CONFIG,
// so that a process says it once however many times it loads.
var legacyNoted atomic.Bool

// FromEnv returns the value that an entry point hands to [Load]: that of
// [EnvVar] (BOULE_CONFIG) or, when it is unset or blank (which [Load]
// reads as no configuration), that of [LegacyEnvVar] (VERNEUIL_CONFIG),
// Verneuil's name for it. lookup reads one environment variable, as
// os.LookupEnv does: entry points pass it, so that this package reads no
// environment of its own.
//
// The first time in a process that the value comes from VERNEUIL_CONFIG,
// FromEnv says so at warn level to log (nil means slog.Default()), so
// that a configuration nobody meant for Boule does not go unnoticed.
func FromEnv(lookup func(string) (string, bool), log *slog.Logger) string {
	value, set := lookup(EnvVar)
	if strings.TrimSpace(value) != "" {
		return value
	}
	legacy, _ := lookup(LegacyEnvVar)
	if strings.TrimSpace(legacy) == "" {
		return value
	}
	if legacyNoted.CompareAndSwap(false, true) {
		if log == nil {
			log = slog.Default()
		}
		why := "unset"
		if set {
			why = "empty"
		}
		log.Warn("config: "+LegacyEnvVar+" used because "+EnvVar+" is "+why,
			"hint", "Boule reads Verneuil's configuration keys; set "+EnvVar+" instead to silence this")
	}
	return legacy
}
