module gateway.test/trailcheck

go 1.19

require golang.org/x/mod v0.7.0

// Offline build against Debian's golang-golang-x-mod-dev. The interop test
// copies this directory and points the replace at GATEWAY_GO_X_MOD_DIR when set.
replace golang.org/x/mod => /usr/share/gocode/src/golang.org/x/mod
