module github.com/boule-vfs/boule

go 1.26.0

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/klauspost/cpuid/v2 v2.0.12 // indirect
	github.com/mattn/go-sqlite3 v1.14.53 // indirect
	github.com/zeebo/blake3 v0.2.4 // indirect
	golang.org/x/time v0.16.0 // indirect
)
