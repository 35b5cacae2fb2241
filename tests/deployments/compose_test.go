package deployments

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Every YAML file under deployments/ parses, every document of it.
func TestYAMLFilesParse(t *testing.T) {
	files := yamlFiles(t)
	if len(files) < 5 {
		t.Fatalf("found only %d YAML files under deployments/: %v", len(files), files)
	}
	for _, f := range files {
		if docs := yamlDocs(t, f); len(docs) == 0 {
			t.Errorf("%s: no YAML document", f)
		}
	}
}

type composeService struct {
	name string
	def  map[string]any
}

func (s composeService) image() string { return getString(s.def, "image") }

// command returns the service's command as a list (Compose allows a string).
func (s composeService) command() []string {
	switch c := get(s.def, "command").(type) {
	case []any:
		return toStrings(c)
	case string:
		return strings.Fields(c)
	}
	return nil
}

// env returns the service's environment, in map or list form.
func (s composeService) env() map[string]string {
	env := map[string]string{}
	switch e := get(s.def, "environment").(type) {
	case map[string]any:
		for k, v := range e {
			if v == nil {
				env[k] = ""
			} else {
				env[k] = fmt.Sprint(v)
			}
		}
	case []any:
		for _, kv := range toStrings(e) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	return env
}

func (s composeService) replicas() int {
	if n, ok := getInt(s.def, "deploy", "replicas"); ok {
		return n
	}
	return 1
}

// publishedPort is one entry of a service's `ports`.
type publishedPort struct {
	spec      string
	host      string // the host address it binds; "" for every interface
	container int
}

// publishedPorts parses `ports` in the short syntax ("8080",
// "8080:8080", "127.0.0.1:8404:8404", with an optional "/tcp") and the
// long one (target, host_ip).
func (s composeService) publishedPorts() []publishedPort {
	var out []publishedPort
	for _, p := range getList(s.def, "ports") {
		if m, ok := p.(map[string]any); ok {
			n, _ := getInt(m, "target")
			out = append(out, publishedPort{spec: fmt.Sprint(m), host: getString(m, "host_ip"), container: n})
			continue
		}
		spec := fmt.Sprint(p)
		parts := strings.Split(strings.SplitN(spec, "/", 2)[0], ":")
		n, _ := strconv.Atoi(parts[len(parts)-1])
		pp := publishedPort{spec: spec, container: n}
		if len(parts) == 3 {
			pp.host = parts[0]
		}
		out = append(out, pp)
	}
	return out
}

// cmdFlag returns the value of --name=value or --name value in a command.
func cmdFlag(cmd []string, names ...string) (string, bool) {
	for i, a := range cmd {
		for _, n := range names {
			if v, ok := strings.CutPrefix(a, n+"="); ok {
				return v, true
			}
			if a == n {
				if i+1 < len(cmd) && !strings.HasPrefix(cmd[i+1], "-") {
					return cmd[i+1], true
				}
				return "", true
			}
		}
	}
	return "", false
}

func loadCompose(t *testing.T) (map[string]any, []composeService) {
	t.Helper()
	docs := yamlDocs(t, filepath.Join(deployDir(t), "docker-compose.yml"))
	if len(docs) != 1 {
		t.Fatalf("docker-compose.yml: want 1 document, got %d", len(docs))
	}
	services := getMap(docs[0], "services")
	if len(services) == 0 {
		t.Fatal("docker-compose.yml: no services")
	}
	var out []composeService
	for _, name := range sortedKeys(services) {
		def, ok := services[name].(map[string]any)
		if !ok {
			t.Fatalf("service %s is not a map", name)
		}
		out = append(out, composeService{name, def})
	}
	return docs[0], out
}

// resoundRole tells a gateway from a worker by the command it runs (the
// image's default command is the gateway).
func resoundRole(s composeService) string {
	cmd := s.command()
	if len(cmd) == 0 {
		return "gateway"
	}
	return filepath.Base(cmd[0])
}

func TestCompose(t *testing.T) {
	top, services := loadCompose(t)

	var nats, gateways, workers, haproxy []composeService
	gatewayCount, workerCount := 0, 0
	for _, s := range services {
		switch img := s.image(); {
		case strings.HasPrefix(img, "nats:"):
			nats = append(nats, s)
		case strings.HasPrefix(img, "haproxy:"):
			haproxy = append(haproxy, s)
		case strings.HasPrefix(img, "resound") || get(s.def, "build") != nil:
			switch resoundRole(s) {
			case "gateway":
				gateways = append(gateways, s)
				gatewayCount += s.replicas()
			case "worker":
				workers = append(workers, s)
				workerCount += s.replicas()
			default:
				t.Errorf("service %s: runs %v, neither gateway nor worker", s.name, s.command())
			}
		default:
			t.Errorf("service %s: unexpected image %q", s.name, img)
		}
	}
	if len(nats) != 3 {
		t.Errorf("want 3 NATS services, got %d", len(nats))
	}
	if gatewayCount != 3 {
		t.Errorf("want 3 gateways, got %d", gatewayCount)
	}
	if workerCount != 2 {
		t.Errorf("want 2 workers, got %d", workerCount)
	}
	if len(haproxy) != 1 {
		t.Fatalf("want 1 haproxy service, got %d", len(haproxy))
	}

	t.Run("nats cluster", func(t *testing.T) { checkNATSCluster(t, top, nats) })
	t.Run("resound services", func(t *testing.T) { checkResoundServices(t, top, nats, gateways, workers) })
	t.Run("haproxy", func(t *testing.T) { checkHAProxyService(t, haproxy[0], gateways) })
}

func checkNATSCluster(t *testing.T, top map[string]any, nats []composeService) {
	volumes := getMap(top, "volumes")
	names := map[string]bool{}
	for _, s := range nats {
		names[s.name] = true
	}
	clusterNames := map[string]bool{}
	serverNames := map[string]bool{}
	for _, s := range nats {
		where := "service " + s.name
		// nats:2.11 or newer.
		tag := strings.TrimPrefix(s.image(), "nats:")
		var major, minor int
		if _, err := fmt.Sscanf(tag, "%d.%d", &major, &minor); err != nil || major < 2 || (major == 2 && minor < 11) {
			t.Errorf("%s: image %q: want nats:2.11 or newer", where, s.image())
		}
		cmd := s.command()
		if _, ok := cmdFlag(cmd, "--jetstream", "-js"); !ok {
			t.Errorf("%s: JetStream not enabled (--jetstream): %v", where, cmd)
		}
		name, ok := cmdFlag(cmd, "--name", "--server_name", "-n")
		if !ok || name == "" {
			t.Errorf("%s: no server name (JetStream clustering needs unique ones)", where)
		} else if serverNames[name] {
			t.Errorf("%s: server name %q is not unique", where, name)
		}
		serverNames[name] = true
		cn, ok := cmdFlag(cmd, "--cluster_name")
		if !ok || cn == "" {
			t.Errorf("%s: no --cluster_name", where)
		}
		clusterNames[cn] = true
		if _, ok := cmdFlag(cmd, "--cluster"); !ok {
			t.Errorf("%s: no --cluster listen address", where)
		}
		routes, _ := cmdFlag(cmd, "--routes")
		routed := map[string]bool{}
		for _, r := range strings.Split(routes, ",") {
			u, err := url.Parse(strings.TrimSpace(r))
			if err != nil || u.Hostname() == "" {
				t.Errorf("%s: bad route %q", where, r)
				continue
			}
			if !names[u.Hostname()] {
				t.Errorf("%s: route %q names no NATS service", where, r)
			}
			routed[u.Hostname()] = true
		}
		for other := range names {
			if other != s.name && !routed[other] {
				t.Errorf("%s: no route to %s (routes %q)", where, other, routes)
			}
		}
		// The file store is on a named volume.
		storeDir, ok := cmdFlag(cmd, "--store_dir", "-sd")
		if !ok || storeDir == "" {
			t.Errorf("%s: no --store_dir", where)
			continue
		}
		found := false
		for _, v := range toStrings(getList(s.def, "volumes")) {
			src, dst, _ := strings.Cut(v, ":")
			dst, _, _ = strings.Cut(dst, ":")
			if dst == storeDir {
				found = true
				if _, ok := volumes[src]; !ok {
					t.Errorf("%s: %s is mounted from %q, not a named volume declared under volumes:", where, storeDir, src)
				}
			}
		}
		if !found {
			t.Errorf("%s: nothing mounted at the store dir %s", where, storeDir)
		}
	}
	if len(clusterNames) != 1 {
		t.Errorf("NATS services are not one cluster: cluster names %v", sortedKeys(clusterNames))
	}
}

func checkResoundServices(t *testing.T, top map[string]any, nats, gateways, workers []composeService) {
	secrets := getMap(top, "secrets")
	all := append(slices.Clone(gateways), workers...)
	var envNames []string
	for _, s := range all {
		where := "service " + s.name
		env := s.env()
		for k := range env {
			envNames = append(envNames, k)
		}
		if env["RESOUND_LOG_FORMAT"] != "json" {
			t.Errorf("%s: RESOUND_LOG_FORMAT=%q, want json", where, env["RESOUND_LOG_FORMAT"])
		}
		// NATS_URL names every NATS service.
		hosts := map[string]bool{}
		for _, u := range strings.Split(env["NATS_URL"], ",") {
			if pu, err := url.Parse(strings.TrimSpace(u)); err == nil {
				hosts[pu.Hostname()] = true
			}
		}
		for _, n := range nats {
			if !hosts[n.name] {
				t.Errorf("%s: NATS_URL %q does not list %s", where, env["NATS_URL"], n.name)
			}
		}
		if env["RESOUND_NATS_REPLICAS"] != strconv.Itoa(len(nats)) {
			t.Errorf("%s: RESOUND_NATS_REPLICAS=%q, want one replica on each of the %d NATS services", where, env["RESOUND_NATS_REPLICAS"], len(nats))
		}
		// The apps file is mounted where RESOUND_APPS_FILE says.
		appsFile := env["RESOUND_APPS_FILE"]
		if appsFile == "" {
			t.Errorf("%s: no RESOUND_APPS_FILE", where)
		} else if !mountsSecretAt(s, secrets, appsFile) && !mountsVolumeAt(s, appsFile) {
			t.Errorf("%s: nothing is mounted at RESOUND_APPS_FILE=%s", where, appsFile)
		}
		// SIGTERM must have time to finish: more than the drain window.
		window := drainWindow(t, where, env)
		grace, err := seconds(get(s.def, "stop_grace_period"))
		if err != nil {
			t.Errorf("%s: stop_grace_period: %v (Docker's default, 10s, cuts the drain short)", where, err)
		} else if grace <= window {
			t.Errorf("%s: stop_grace_period %v does not exceed the drain window %v", where, grace, window)
		}
		// The image is built from deployments/Dockerfile.
		if b := get(s.def, "build"); b != nil {
			ctx := getString(b, "context")
			df := getString(b, "dockerfile")
			p := filepath.Join(deployDir(t), ctx, df)
			if _, err := os.Stat(p); err != nil {
				t.Errorf("%s: build dockerfile %s: %v", where, p, err)
			}
		}
		if nofile, ok := getInt(s.def, "ulimits", "nofile", "hard"); !ok || nofile < 1048576 {
			t.Errorf("%s: ulimits.nofile.hard = %v, want 1048576", where, get(s.def, "ulimits", "nofile"))
		}
	}
	for _, s := range gateways {
		env := s.env()
		port := portFrom(t, s.name, env, "REVERB_SERVER_PORT", defaultGatewayPort)
		if port != defaultGatewayPort {
			t.Errorf("service %s: gateway port %d, but haproxy.cfg and the docs use %d", s.name, port, defaultGatewayPort)
		}
		// The operations port is set and stays on the Compose network.
		if _, ops := opsAddr(t, "service "+s.name, env); ops != 0 {
			for _, p := range s.publishedPorts() {
				if p.container == ops {
					t.Errorf("service %s: publishes the operations port %d (%s): /metrics and /debug/pprof/ must not leave the Compose network", s.name, ops, p.spec)
				}
			}
		}
	}
	for _, s := range workers {
		if s.env()["NATS_URL"] == "" {
			t.Errorf("service %s: the worker needs NATS_URL", s.name)
		}
	}
	checkEnvNames(t, "docker-compose.yml", envNames)
}

// mountsSecretAt reports whether the service mounts a file secret at path,
// and that the secret's file exists.
func mountsSecretAt(s composeService, secrets map[string]any, path string) bool {
	for _, sec := range getList(s.def, "secrets") {
		var source, target string
		switch x := sec.(type) {
		case string:
			source, target = x, "/run/secrets/"+x
		case map[string]any:
			source, target = getString(x, "source"), getString(x, "target")
			if target == "" {
				target = "/run/secrets/" + source
			} else if !strings.HasPrefix(target, "/") {
				target = "/run/secrets/" + target
			}
		}
		if target == path && secrets[source] != nil {
			return true
		}
	}
	return false
}

func mountsVolumeAt(s composeService, path string) bool {
	for _, v := range toStrings(getList(s.def, "volumes")) {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && (parts[1] == path || strings.HasPrefix(path, parts[1]+"/")) {
			return true
		}
	}
	return false
}

// The secret files Compose reads exist (a ${VAR:-default} path by its
// default).
func TestComposeSecretFiles(t *testing.T) {
	top, _ := loadCompose(t)
	interp := regexp.MustCompile(`^\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}$`)
	secrets := getMap(top, "secrets")
	if len(secrets) == 0 {
		t.Fatal("no secrets: the apps file should be one")
	}
	for name, def := range secrets {
		file := getString(def, "file")
		if m := interp.FindStringSubmatch(file); m != nil {
			file = m[1]
		}
		if file == "" {
			t.Errorf("secret %s: no file", name)
			continue
		}
		if _, err := os.Stat(filepath.Join(deployDir(t), file)); err != nil {
			t.Errorf("secret %s: %v", name, err)
		}
	}
}

func checkHAProxyService(t *testing.T, s composeService, gateways []composeService) {
	published := false
	for _, p := range toStrings(getList(s.def, "ports")) {
		if strings.HasPrefix(p, "8080:") || p == "8080" {
			published = true
		}
	}
	if !published {
		t.Errorf("haproxy: port 8080 is not published: %v", getList(s.def, "ports"))
	}
	// Only the public port leaves the host; HAProxy's own statistics and
	// metrics (8404) stay on its loopback.
	for _, p := range s.publishedPorts() {
		if p.container != defaultGatewayPort && p.host != "127.0.0.1" && p.host != "::1" {
			t.Errorf("haproxy: publishes %s on every interface: only %d is public, bind the others to 127.0.0.1", p.spec, defaultGatewayPort)
		}
	}
	mounted := false
	for _, v := range toStrings(getList(s.def, "volumes")) {
		src, dst, _ := strings.Cut(v, ":")
		dst, _, _ = strings.Cut(dst, ":")
		if filepath.Clean(src) == filepath.Join("haproxy", "haproxy.cfg") && dst == "/usr/local/etc/haproxy/haproxy.cfg" {
			mounted = true
		}
	}
	if !mounted {
		t.Error("haproxy: ./haproxy/haproxy.cfg is not mounted at /usr/local/etc/haproxy/haproxy.cfg")
	}
	// Every gateway is a server in the backend, by service name.
	cfg := parseHAProxy(t)
	backend := cfg.backendWithServers()
	if backend == nil {
		t.Fatal("haproxy.cfg: no backend with servers")
	}
	servers := map[string]bool{}
	for _, addr := range backend.servers() {
		servers[addr] = true
	}
	for _, g := range gateways {
		addr := g.name + ":" + strconv.Itoa(portFrom(t, g.name, g.env(), "REVERB_SERVER_PORT", defaultGatewayPort))
		if !servers[addr] {
			t.Errorf("haproxy.cfg: backend %s has no server %s (servers %v)", backend.name, addr, sortedKeys(servers))
		}
		// No backend reaches a gateway's operations port.
		if _, port, err := net.SplitHostPort(g.env()["RESOUND_OPS_ADDR"]); err == nil {
			ops := g.name + ":" + port
			for _, b := range append(cfg.find("backend"), cfg.find("listen")...) {
				if slices.Contains(b.servers(), ops) {
					t.Errorf("haproxy.cfg: %s %s routes to %s, the gateway's operations port", b.kind, b.name, ops)
				}
			}
		}
	}
}
