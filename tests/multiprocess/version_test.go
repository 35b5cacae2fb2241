package multiprocess

import (
	"debug/buildinfo"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestVersionFlag: both binaries print one line with the module version and
// the VCS stamp the toolchain put in them, read back here independently
// with debug/buildinfo, and exit 0 without reading any setting.
func TestVersionFlag(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	head := ""
	if out, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output(); err == nil {
		head = strings.TrimSpace(string(out))
	}
	for _, bin := range []string{"gateway", "worker"} {
		for _, arg := range []string{"--version", "-version", "version"} {
			t.Run(bin+" "+arg, func(t *testing.T) {
				// An invalid setting proves the flag is answered before the
				// settings are read.
				stdout, stderr, code := runOnce(t, bin, []string{"REVERB_SERVER_PORT=nope"}, arg)
				if code != 0 {
					t.Fatalf("exit %d; stderr:\n%s", code, stderr)
				}
				line, rest, _ := strings.Cut(stdout, "\n")
				if rest != "" || line == "" {
					t.Fatalf("want one line, got %q", stdout)
				}
				bi, err := buildinfo.ReadFile(filepath.Join(binDir, bin))
				if err != nil {
					t.Fatal(err)
				}
				for _, want := range []string{bin + " " + bi.Main.Version + " ", " " + bi.GoVersion + " ", runtime.GOOS + "/" + runtime.GOARCH} {
					if !strings.Contains(line, want) {
						t.Errorf("%q lacks %q", line, want)
					}
				}
				stamp := map[string]string{}
				for _, s := range bi.Settings {
					stamp[s.Key] = s.Value
				}
				rev := stamp["vcs.revision"]
				switch {
				case rev == "":
					// Built outside a checkout, by a Go that cannot read
					// this one (a git worktree), or with -buildvcs=false.
					if !strings.Contains(line, "(no VCS stamp)") {
						t.Errorf("%q does not say it has no VCS stamp", line)
					}
				default:
					if !strings.Contains(line, "(revision "+rev+", "+stamp["vcs.time"]) {
						t.Errorf("%q lacks the revision %s and time %s", line, rev, stamp["vcs.time"])
					}
					if strings.Contains(line, ", modified)") != (stamp["vcs.modified"] == "true") {
						t.Errorf("%q disagrees with vcs.modified=%s", line, stamp["vcs.modified"])
					}
					if head != "" && rev != head {
						t.Errorf("stamped revision %s, but the checkout is at %s", rev, head)
					}
				}
				t.Log(line)
			})
		}
	}
}
