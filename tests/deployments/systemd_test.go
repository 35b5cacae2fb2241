package deployments

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// systemdUnit is a unit file: section -> key -> values (keys may repeat).
type systemdUnit map[string]map[string][]string

func parseUnit(t *testing.T, rel string) systemdUnit {
	t.Helper()
	u := systemdUnit{}
	var section string
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, rel)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Errorf("%s:%d: not KEY=value inside a section: %q", rel, n, line)
			continue
		}
		u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
	}
	return u
}

func (u systemdUnit) last(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// readEnvFile returns the names and values of an EnvironmentFile, and the
// names on commented-out KEY=value lines (examples of optional settings).
func readEnvFile(t *testing.T, rel string) (set map[string]string, commented []string) {
	t.Helper()
	set = map[string]string{}
	assign := regexp.MustCompile(`^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$`)
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, rel)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		m := assign.FindStringSubmatch(line)
		if m == nil {
			if line != "" && !strings.HasPrefix(line, "#") {
				t.Errorf("%s:%d: not KEY=value: %q", rel, n, line)
			}
			continue
		}
		if m[1] != "" {
			commented = append(commented, m[2])
			continue
		}
		if strings.HasPrefix(line, "export ") {
			t.Errorf("%s:%d: systemd does not understand `export`", rel, n)
		}
		set[m[2]] = m[3]
	}
	return set, commented
}

func TestSystemdEnvFile(t *testing.T) {
	set, commented := readEnvFile(t, "systemd/resound.env.example")
	names := append(sortedKeys(set), commented...)
	checkEnvNames(t, "systemd/resound.env.example", names)
	if set["RESOUND_LOG_FORMAT"] != "json" {
		t.Errorf("RESOUND_LOG_FORMAT=%q, want json", set["RESOUND_LOG_FORMAT"])
	}
	// Nothing in front of a systemd host filters ports: the operations
	// endpoints bind a chosen interface, not all of them.
	if host, port := opsAddr(t, "systemd/resound.env.example", set); port != 0 && allInterfaces(host) {
		t.Errorf("RESOUND_OPS_ADDR=%q listens on every interface: bind loopback or a private address", set["RESOUND_OPS_ADDR"])
	}
}

func TestSystemdUnits(t *testing.T) {
	env, _ := readEnvFile(t, "systemd/resound.env.example")
	window := drainWindow(t, "resound.env.example", env)
	for _, role := range []string{"gateway", "worker"} {
		rel := "systemd/resound-" + role + ".service"
		t.Run(role, func(t *testing.T) {
			u := parseUnit(t, rel)
			for _, s := range []string{"Unit", "Service", "Install"} {
				if u[s] == nil {
					t.Errorf("%s: no [%s] section", rel, s)
				}
			}
			execStart := strings.Fields(u.last("Service", "ExecStart"))
			if len(execStart) == 0 || execStart[0] != "/usr/local/bin/"+role {
				t.Errorf("%s: ExecStart=%v, want /usr/local/bin/%s", rel, execStart, role)
			}
			want := map[string]string{
				"EnvironmentFile": "/etc/resound/resound.env",
				"LimitNOFILE":     "1048576",
				"Restart":         "on-failure",
				"KillSignal":      "SIGTERM",
				"NoNewPrivileges": "yes",
				"ProtectSystem":   "strict",
			}
			for k, v := range want {
				if got := u.last("Service", k); got != v {
					t.Errorf("%s: %s=%q, want %q", rel, k, got, v)
				}
			}
			if u.last("Service", "User") == "" && u.last("Service", "DynamicUser") != "yes" {
				t.Errorf("%s: runs as root: set User= or DynamicUser=yes", rel)
			}
			if u.last("Install", "WantedBy") == "" {
				t.Errorf("%s: no WantedBy=", rel)
			}
			stop, err := seconds(u.last("Service", "TimeoutStopSec"))
			if err != nil {
				t.Errorf("%s: TimeoutStopSec: %v", rel, err)
			} else if stop <= window {
				t.Errorf("%s: TimeoutStopSec %v does not exceed the drain window %v", rel, stop, window)
			}
			if role == "gateway" {
				// All-in-one writes the embedded NATS store: the data dir must be
				// writable under ProtectSystem=strict.
				dataDir := env["RESOUND_DATA_DIR"]
				if dataDir == "" {
					t.Fatalf("resound.env.example sets no RESOUND_DATA_DIR")
				}
				writable := false
				for _, p := range u["Service"]["ReadWritePaths"] {
					for _, f := range strings.Fields(p) {
						f = strings.TrimLeft(f, "-+")
						writable = writable || dataDir == f || strings.HasPrefix(dataDir, f+"/")
					}
				}
				for _, d := range u["Service"]["StateDirectory"] {
					for _, f := range strings.Fields(d) {
						p := "/var/lib/" + f
						writable = writable || dataDir == p || strings.HasPrefix(dataDir, p+"/")
					}
				}
				if !writable {
					t.Errorf("%s: RESOUND_DATA_DIR=%s is not writable (ReadWritePaths=/StateDirectory=)", rel, dataDir)
				}
			}
		})
	}
}

// systemd-analyze verify, where systemd is installed. ExecStart must name
// an executable that exists, so the units are checked in a copy that runs
// the freshly built binaries.
func TestSystemdAnalyzeVerify(t *testing.T) {
	bin := lookPath(t, "systemd-analyze")
	buildBinaries(t)
	dir := t.TempDir()
	var units []string
	for _, role := range []string{"gateway", "worker"} {
		name := "resound-" + role + ".service"
		b := readFile(t, filepath.Join("systemd", name))
		b = bytes.ReplaceAll(b, []byte("ExecStart=/usr/local/bin/"+role), []byte("ExecStart="+binaries[role]))
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	cmd := exec.Command(bin, append([]string{"verify", "--man=no"}, units...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// verify exits 0 on some warnings; fail on any about our units.
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(line, "resound-") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}
