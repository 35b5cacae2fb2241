// Package version describes the running binary in one line, for --version,
// from what the Go toolchain stamped into it: the main module's version and
// the VCS revision, time and modified flag (runtime/debug.ReadBuildInfo).
package version

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// String is the one-line version of the program named program, e.g.
//
//	gateway v0.0.0-20260102150405-0123456789ab+dirty (revision 0123456789abcdef…, 2026-01-02T15:04:05Z, modified) go1.26.8 linux/amd64
func String(program string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return format(program, bi)
}

// format is String for the given build information (nil when the binary
// carries none).
func format(program string, bi *debug.BuildInfo) string {
	var b strings.Builder
	b.WriteString(program)
	b.WriteByte(' ')
	goVersion := runtime.Version()
	if bi == nil {
		b.WriteString("(unknown version)")
	} else {
		b.WriteString(bi.Main.Version)
		if bi.Main.Version == "" {
			b.WriteString("(devel)")
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
		var rev, at string
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		// go build stamps VCS data only in a checkout with the VCS tool on
		// PATH (and not with -buildvcs=false, nor for go run): say so rather
		// than print an empty revision.
		switch {
		case rev == "":
			b.WriteString(" (no VCS stamp)")
		default:
			b.WriteString(" (revision ")
			b.WriteString(rev)
			if at != "" {
				b.WriteString(", ")
				b.WriteString(at)
			}
			if modified {
				b.WriteString(", modified")
			}
			b.WriteByte(')')
		}
	}
	b.WriteByte(' ')
	b.WriteString(goVersion)
	b.WriteByte(' ')
	b.WriteString(runtime.GOOS)
	b.WriteByte('/')
	b.WriteString(runtime.GOARCH)
	return b.String()
}
