package deployments

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

type haSection struct {
	kind, name string
	lines      []string // directives, comments and blank lines removed
}

// servers returns the "host:port" of each `server` line.
func (s *haSection) servers() []string {
	var out []string
	for _, l := range s.lines {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == "server" {
			out = append(out, f[2])
		}
	}
	return out
}

// has reports whether a directive starting with these words is present.
func (s *haSection) has(words ...string) bool {
	for _, l := range s.lines {
		f := strings.Fields(l)
		if len(f) >= len(words) && slices.Equal(f[:len(words)], words) {
			return true
		}
	}
	return false
}

type haConfig struct{ sections []*haSection }

func (c *haConfig) find(kind string) []*haSection {
	var out []*haSection
	for _, s := range c.sections {
		if s.kind == kind {
			out = append(out, s)
		}
	}
	return out
}

func (c *haConfig) backendWithServers() *haSection {
	for _, s := range c.find("backend") {
		if len(s.servers()) > 0 {
			return s
		}
	}
	return nil
}

var haSectionKinds = map[string]bool{
	"global": true, "defaults": true, "frontend": true, "backend": true, "listen": true,
	"resolvers": true, "peers": true, "userlist": true, "program": true, "cache": true,
	"mailers": true, "http-errors": true, "ring": true,
}

func parseHAProxy(t testing.TB) *haConfig {
	t.Helper()
	cfg := &haConfig{}
	var cur *haSection
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, "haproxy/haproxy.cfg")))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if haSectionKinds[f[0]] && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") {
			cur = &haSection{kind: f[0]}
			if len(f) > 1 {
				cur.name = f[1]
			}
			cfg.sections = append(cfg.sections, cur)
			continue
		}
		if cur == nil {
			t.Fatalf("haproxy.cfg: directive outside any section: %q", line)
		}
		cur.lines = append(cur.lines, strings.Join(f, " "))
	}
	return cfg
}

func TestHAProxyConfig(t *testing.T) {
	cfg := parseHAProxy(t)
	backend := cfg.backendWithServers()
	if backend == nil {
		t.Fatal("no backend with servers")
	}
	servers := backend.servers()
	if len(servers) != 3 {
		t.Errorf("backend %s: want the 3 gateways, got %v", backend.name, servers)
	}
	for i, want := range []string{"gateway-1:8080", "gateway-2:8080", "gateway-3:8080"} {
		if i < len(servers) && servers[i] != want {
			t.Errorf("backend %s: server %d is %s, want %s", backend.name, i+1, servers[i], want)
		}
	}
	if !backend.has("balance", "leastconn") {
		t.Errorf("backend %s: want balance leastconn (WebSockets are long-lived)", backend.name)
	}
	if !backend.has("option", "httpchk") {
		t.Errorf("backend %s: no option httpchk", backend.name)
	}
	checksUp := false
	for _, l := range backend.lines {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "http-check" && f[1] == "send" && strings.Contains(" "+l+" ", " uri /up ") {
			checksUp = true
		}
		if len(f) >= 3 && f[0] == "option" && f[1] == "httpchk" && strings.Contains(l, "/up") {
			checksUp = true
		}
	}
	if !checksUp {
		t.Errorf("backend %s: health check does not GET /up", backend.name)
	}
	if !backend.has("http-check", "expect", "status", "200") {
		t.Errorf("backend %s: health check should expect 200 (/up is 503 while starting or draining)", backend.name)
	}
	checked := backend.has("default-server") && strings.Contains(strings.Join(backend.lines, "\n"), " check")
	if !checked {
		t.Errorf("backend %s: servers are not health-checked", backend.name)
	}

	// timeout tunnel, in the backend or in a defaults section.
	tunnel := backend.has("timeout", "tunnel")
	for _, d := range cfg.find("defaults") {
		tunnel = tunnel || d.has("timeout", "tunnel")
	}
	if !tunnel {
		t.Error("no `timeout tunnel`: upgraded WebSockets would be cut by the client/server timeouts")
	}
	for _, s := range cfg.sections {
		if s.has("option", "http-server-close") || s.has("option", "httpclose") {
			t.Errorf("%s %s: option http-server-close/httpclose is not wanted in front of WebSockets", s.kind, s.name)
		}
		if s.kind != "global" && s.kind != "resolvers" && s.has("mode", "tcp") {
			t.Errorf("%s %s: mode tcp: /up checks and Upgrade handling need mode http", s.kind, s.name)
		}
	}
	bound := false
	for _, fe := range append(cfg.find("frontend"), cfg.find("listen")...) {
		for _, l := range fe.lines {
			f := strings.Fields(l)
			if len(f) >= 2 && f[0] == "bind" && strings.HasSuffix(f[1], ":8080") {
				bound = true
			}
		}
	}
	if !bound {
		t.Error("no frontend binds :8080")
	}

	// The public frontend refuses the operations paths itself, in case a
	// gateway serves them on its public port after all.
	for _, fe := range append(cfg.find("frontend"), cfg.find("listen")...) {
		public := false
		for _, l := range fe.lines {
			f := strings.Fields(l)
			public = public || (len(f) >= 2 && f[0] == "bind" && strings.HasSuffix(f[1], ":8080"))
		}
		if !public {
			continue
		}
		for _, path := range []string{"/metrics", "/debug/pprof"} {
			refused := false
			for _, l := range fe.lines {
				f := strings.Fields(l)
				refused = refused || (len(f) >= 2 && f[0] == "http-request" &&
					(f[1] == "deny" || f[1] == "silent-drop" || f[1] == "tarpit" || f[1] == "return") && strings.Contains(l, path))
			}
			if !refused {
				t.Errorf("%s %s: binds :8080 but does not refuse %s (http-request deny if { path_beg %s })", fe.kind, fe.name, path, path)
			}
		}
	}
	// Every server is a gateway's public port, never its operations port.
	for _, b := range append(cfg.find("backend"), cfg.find("listen")...) {
		for _, addr := range b.servers() {
			if !strings.HasSuffix(addr, ":8080") {
				t.Errorf("%s %s: server %s is not a gateway's public port 8080", b.kind, b.name, addr)
			}
		}
	}
}

// haproxy -c, where HAProxy happens to be installed.
func TestHAProxyConfigCheck(t *testing.T) {
	bin := lookPath(t, "haproxy")
	cfg := filepath.Join(deployDir(t), "haproxy", "haproxy.cfg")
	if _, err := os.Stat(cfg); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-c", "-f", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c -f %s: %v\n%s", cfg, err, out)
	}
}
