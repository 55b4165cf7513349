// Package upload moves spooled snapshots to the stores: one [Uploader] per
// process, with a few workers woken by each published snapshot, a
// per-target rate limiter, packs of chunks, the daily touch that keeps
// live chunks from expiring, flushes that tell the truth, and the status
// of each database.
//
// It reads and changes the spool only through package spool's API, and
// reaches the stores only through package store.
package upload
