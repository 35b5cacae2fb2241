package deployments

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The metrics the binaries export (internal/metrics, internal/webhook), which the dashboard may
// query and deployments/README.md lists. TestMetricNames keeps the four in
// step.
var metricNames = []string{
	// gateway
	"resound_connections",
	"resound_subscriptions",
	"resound_channels",
	"resound_messages_in_total",
	"resound_messages_out_total",
	"resound_deliveries_total",
	"resound_slow_consumers_total",
	"resound_duplicates_dropped_total",
	"resound_errors_total",
	"resound_handshakes_total",
	"resound_accept_backoff_total",
	"resound_limit_hits_total",
	"resound_panics_total",
	"resound_state_retries_total",
	"resound_count_writes_total",
	"resound_catchups_total",
	"resound_catchup_replayed_total",
	"resound_resumes_total",
	"resound_memory_trims_total",
	"resound_webhook_records_total",
	"resound_webhook_records_queued",
	// gateway and worker
	"resound_console_entries_total",
	// worker
	"resound_jobs_total",
	"resound_job_latency_seconds",
	"resound_webhooks_total",
	"resound_webhook_latency_seconds",
	"resound_worker_deliveries_total",
	"resound_queue_lag",
}

// Histograms: Prometheus exposes them as _bucket, _sum and _count series.
var histogramNames = map[string]bool{"resound_job_latency_seconds": true, "resound_webhook_latency_seconds": true}

// Settings announced for the scaling work before `--help` listed them: the
// deployment files were written against this contract. `--help` now lists
// both, so this allow-list only matters if a binary is built from an older
// tree; TestEnvAllowList logs when it has become redundant.
var comingEnv = map[string]string{
	"RESOUND_DRAIN_WINDOW": "seconds over which a draining gateway spreads its clients' reconnects (default 10)",
	"RESOUND_METRICS_PORT": "the worker's /up and /metrics port (default 9091)",
}

// Variables the Go runtime reads in every Go binary; not Resound settings.
var goRuntimeEnv = map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true, "GOGC": true, "GODEBUG": true}

// Defaults the checks rely on (README configuration table and the contract).
const (
	defaultGatewayPort = 8080
	defaultMetricsPort = 9091
	defaultDrainWindow = 10 * time.Second
)

var (
	tmpDir string

	buildOnce sync.Once
	buildErr  error
	binaries  map[string]string // "gateway", "worker" -> path
	helpEnv   map[string]bool   // the names `gateway --help` and `worker --help` list
	knownEnv  map[string]bool   // helpEnv plus comingEnv
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "resound-deployments-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "deployments:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	tmpDir = dir
	return m.Run()
}

// root is the module root; deployments/ is under it.
func root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/resoundhq/resound\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod of github.com/resoundhq/resound above the working directory")
		}
		dir = parent
	}
}

func deployDir(t testing.TB) string { return filepath.Join(root(t), "deployments") }

func readFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readRoot(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// buildBinaries builds cmd/gateway and cmd/worker once, and reads the
// settings they know from their --help output.
func buildBinaries(t testing.TB) {
	t.Helper()
	buildOnce.Do(func() {
		binaries = map[string]string{}
		helpEnv = map[string]bool{}
		knownEnv = map[string]bool{}
		mod := root(t)
		for _, name := range []string{"gateway", "worker"} {
			out := filepath.Join(tmpDir, name)
			cmd := exec.Command("go", "build", "-o", out, "./cmd/"+name)
			cmd.Dir = mod
			if b, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build ./cmd/%s: %v\n%s", name, err, b)
				return
			}
			binaries[name] = out
			help, err := exec.Command(out, "--help").Output()
			if err != nil {
				buildErr = fmt.Errorf("%s --help: %v", name, err)
				return
			}
			names := helpEnvNames(help)
			if len(names) < 10 {
				buildErr = fmt.Errorf("%s --help lists only %d settings; has its format changed?\n%s", name, len(names), help)
				return
			}
			for _, n := range names {
				helpEnv[n] = true
				knownEnv[n] = true
			}
		}
		for n := range comingEnv {
			knownEnv[n] = true
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// helpEnvNames extracts the variable names from `--help`: each setting is a
// line indented by two spaces that starts with the name, e.g.
// "  REVERB_SERVER_PORT (default 8080)".
func helpEnvNames(help []byte) []string {
	re := regexp.MustCompile(`^  ([A-Z][A-Z0-9_]*[A-Z0-9])(?:\s|$)`)
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(help))
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

// checkEnvNames fails for every name that neither binary reads.
func checkEnvNames(t *testing.T, where string, names []string) {
	t.Helper()
	buildBinaries(t)
	if len(names) == 0 {
		t.Errorf("%s: no environment variables found", where)
	}
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		if !knownEnv[n] && !goRuntimeEnv[n] {
			t.Errorf("%s: %s is not a setting the binaries know (gateway/worker --help), nor an announced one", where, n)
		}
	}
}

// ---- YAML ------------------------------------------------------------------

// yamlDocs decodes every document of a (multi-document) YAML file. Empty
// documents are skipped.
func yamlDocs(t testing.TB, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []map[string]any
	for i := 0; ; i++ {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i+1, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	return docs
}

// yamlFiles lists the .yml and .yaml files under deployments/.
func yamlFiles(t testing.TB) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(deployDir(t), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yml") || strings.HasSuffix(p, ".yaml")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// get walks nested maps by keys; nil when a step is missing.
func get(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func getMap(v any, keys ...string) map[string]any {
	m, _ := get(v, keys...).(map[string]any)
	return m
}

func getList(v any, keys ...string) []any {
	l, _ := get(v, keys...).([]any)
	return l
}

func getString(v any, keys ...string) string {
	switch s := get(v, keys...).(type) {
	case string:
		return s
	case int:
		return strconv.Itoa(s)
	case nil:
		return ""
	default:
		return fmt.Sprint(s)
	}
}

// getInt reads an integer that YAML may hold as a number or a string.
func getInt(v any, keys ...string) (int, bool) {
	switch n := get(v, keys...).(type) {
	case int:
		return n, true
	case string:
		i, err := strconv.Atoi(n)
		return i, err == nil
	default:
		return 0, false
	}
}

func toStrings(l []any) []string {
	out := make([]string, 0, len(l))
	for _, v := range l {
		out = append(out, fmt.Sprint(v))
	}
	return out
}

// seconds reads "30s", "1m", "30" (seconds) or a number.
func seconds(v any) (time.Duration, error) {
	switch x := v.(type) {
	case int:
		return time.Duration(x) * time.Second, nil
	case string:
		if n, err := strconv.Atoi(x); err == nil {
			return time.Duration(n) * time.Second, nil
		}
		return time.ParseDuration(x)
	default:
		return 0, fmt.Errorf("not a duration: %v", v)
	}
}

// drainWindow is RESOUND_DRAIN_WINDOW from env, or the default.
func drainWindow(t *testing.T, where string, env map[string]string) time.Duration {
	t.Helper()
	s, ok := env["RESOUND_DRAIN_WINDOW"]
	if !ok || s == "" {
		return defaultDrainWindow
	}
	d, err := seconds(s)
	if err != nil {
		t.Errorf("%s: RESOUND_DRAIN_WINDOW=%q: %v", where, s, err)
		return defaultDrainWindow
	}
	return d
}

func portFrom(t *testing.T, where string, env map[string]string, name string, def int) int {
	t.Helper()
	s, ok := env[name]
	if !ok || s == "" {
		return def
	}
	p, err := strconv.Atoi(s)
	if err != nil {
		t.Errorf("%s: %s=%q is not a port", where, name, s)
		return def
	}
	return p
}

// opsAddr reads RESOUND_OPS_ADDR, which every gateway of the deployment
// files must set: the operations endpoints (/metrics, /debug/pprof/) are
// served nowhere without it, and never on the public port. It fails the
// test when the setting is missing or not host:port with a numeric port
// other than the public one.
func opsAddr(t *testing.T, where string, env map[string]string) (host string, port int) {
	t.Helper()
	v, ok := env["RESOUND_OPS_ADDR"]
	if !ok || v == "" {
		t.Errorf("%s: no RESOUND_OPS_ADDR: the gateway's /metrics is then served nowhere", where)
		return "", 0
	}
	host, p, err := net.SplitHostPort(v)
	if err == nil {
		port, err = strconv.Atoi(p)
	}
	if err != nil || port <= 0 || port > 65535 {
		t.Errorf("%s: RESOUND_OPS_ADDR=%q is not host:port", where, v)
		return "", 0
	}
	if public := portFrom(t, where, env, "REVERB_SERVER_PORT", defaultGatewayPort); port == public {
		t.Errorf("%s: RESOUND_OPS_ADDR=%q is the public port", where, v)
	}
	return host, port
}

// allInterfaces reports whether a listening host is every interface.
func allInterfaces(host string) bool {
	return host == "" || host == "0.0.0.0" || host == "::" || host == "[::]"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// lookPath returns the path of a tool, or skips the test without it.
func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed: skipping its own check of the file (the structural checks above still ran)", name)
	}
	return p
}
