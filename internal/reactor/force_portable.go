//go:build resound_portable

package reactor

// forcePortable: built with the resound_portable tag, RESOUND_REACTOR=auto
// chooses the portable backend (see force.go).
const forcePortable = true
