//go:build !faultinject

package worker

// faultPanic does nothing in a normal build; the compiler inlines it away.
func faultPanic(string) {}
