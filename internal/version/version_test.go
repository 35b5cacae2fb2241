package version

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestFormat(t *testing.T) {
	platform := " " + runtime.GOOS + "/" + runtime.GOARCH
	stamp := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	cases := []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"stamped and modified", &debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Path: "github.com/resoundhq/resound", Version: "v0.0.0-20260102150405-0123456789ab+dirty"},
			Settings:  stamp("-race", "true", "vcs", "git", "vcs.revision", "0123456789abcdef0123456789abcdef01234567", "vcs.time", "2026-01-02T15:04:05Z", "vcs.modified", "true"),
		}, "gateway v0.0.0-20260102150405-0123456789ab+dirty (revision 0123456789abcdef0123456789abcdef01234567, 2026-01-02T15:04:05Z, modified) go1.26.8" + platform},
		{"a release", &debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Version: "v1.2.3"},
			Settings:  stamp("vcs.revision", "abc", "vcs.time", "2026-01-02T15:04:05Z", "vcs.modified", "false"),
		}, "gateway v1.2.3 (revision abc, 2026-01-02T15:04:05Z) go1.26.8" + platform},
		{"go run: no VCS stamp", &debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Version: "(devel)"},
		}, "gateway (devel) (no VCS stamp) go1.26.8" + platform},
		{"no build information", nil, "gateway (unknown version) " + runtime.Version() + platform},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := format("gateway", tc.bi)
			if got != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
			if strings.Contains(got, "\n") {
				t.Fatalf("%q is more than one line", got)
			}
		})
	}
}
