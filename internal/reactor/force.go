//go:build !resound_portable

package reactor

// forcePortable makes RESOUND_REACTOR=auto choose the portable backend;
// the resound_portable build tag sets it, so that the test suite runs
// over the portable backend without touching any test's options.
const forcePortable = false
