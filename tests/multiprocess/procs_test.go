package multiprocess

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/resoundhq/resound/pkg/pushertest"
)

// The app every multi-process test configures through REVERB_APP_*.
const (
	appID  = "123456"
	appKey = "reverb-key"
	secret = "reverb-secret"
)

// Running side by side: the suite must stay within CI's ten minutes, and
// this package is its longest pole. Its tests spend their time waiting
// (start-ups, TTLs, pin lapses, ack waits, drains, faults that last
// seconds), not computing: run mostly one at a time they took 5m25s of
// wall time for about 1m35s of CPU. So every test calls t.Parallel and
// the package runs `parallel` of them at once, not GOMAXPROCS (2 here).
// The fault tests still count every delivery exactly: their load is light
// (a few hundred events/s over a few dozen connections), each test has
// its own nats-server, processes, ports and directories, and their waits
// are for conditions with generous deadlines, never for a time. Three,
// not more: the more of them at once, the busier the machine, and on a
// machine loaded by other work too, four at once saw a duplicate
// delivery in the reconnect storm once.
//
// Except the tests that call alone(t) instead, which need the machine
// more than the others: TestSlowConsumerIsCutOff pushes 30 MB/s through
// race-built gateways (beside three other tests, loadgen fell behind its
// schedule); in TestNATSNodeKilledUnderLoad a NATS cluster's election
// under load takes longer when the machine is busier, and some events
// arrived twice (6, with 56 requests answered 503, beside three other
// tests; 15 also alone, on a machine loaded by other work); and in
// TestWebhooksWorkerKilledMidDelivery the killed worker's records came
// after later ones of the same channels (beside three other tests, and
// also alone, on a machine loaded by other work). Those run with no
// other test of this package beside them (the other packages still run
// beside this one, as always): what they show under load is the
// product's to fix, not this package's to add to.
const parallel = 3

// sharing lets the tests run side by side (read-locked by each test that
// calls sideBySide) or one alone (write-locked by alone).
var sharing sync.RWMutex

// sideBySide marks a test that may run beside the package's other tests.
func sideBySide(t *testing.T) {
	t.Parallel()
	sharing.RLock()
	t.Cleanup(sharing.RUnlock)
}

// alone marks a test that runs with no other test of the package beside
// it. It is still parallel for the testing package, so that it may run
// between the others rather than before all of them; the lock does the
// rest. A test waiting for the lock holds one of the parallel slots,
// which delays the others only until it has run.
func alone(t *testing.T) {
	t.Parallel()
	sharing.Lock()
	t.Cleanup(sharing.Unlock)
}

// Bounds on every wait.
const (
	startTimeout = 20 * time.Second // a process becoming ready
	// SIGTERM before SIGKILL. A gateway's clean stop may take its drain
	// window, 2 s for the closes to leave and 5 s for its lanes to finish
	// (internal/gateway Server.Serve); a race-detector build on a busy machine
	// takes longer than a plain one.
	stopGrace    = 15 * time.Second
	buildTimeout = 5 * time.Minute
)

// binDir holds gateway, worker, loadgen and nats-server, built once by
// TestMain.
var binDir string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "multiprocess:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "resound-multiprocess-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "multiprocess:", err)
		return 1
	}
	defer os.RemoveAll(dir)

	// The gateway and the worker are what these tests are about: they run
	// with the race detector, and a race any of them reports fails the test
	// that ran it (startProcOut). loadgen and nats-server are the harness.
	builds := []struct {
		out, pkg string
		race     bool
	}{
		{"gateway", "./cmd/gateway", true},
		{"worker", "./cmd/worker", true},
		{"loadgen", "./cmd/loadgen", false},
		{"nats-server", "github.com/nats-io/nats-server/v2", false}, // the go.mod tool directive
	}
	errs := make([]error, len(builds))
	var wg sync.WaitGroup
	for i, b := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
			defer cancel()
			args := []string{"build", "-o", filepath.Join(dir, b.out)}
			if b.race {
				args = append(args, "-race")
			}
			cmd := exec.CommandContext(ctx, "go", append(args, b.pkg)...)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "multiprocess:", err)
		return 1
	}
	binDir = dir
	// -parallel given on the command line wins (e.g. -parallel 1 to run the
	// tests one at a time, as before, when chasing a flaky one).
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		if err := flag.Set("test.parallel", strconv.Itoa(parallel)); err != nil {
			fmt.Fprintln(os.Stderr, "multiprocess:", err)
			return 1
		}
	}
	return m.Run()
}

// moduleRoot walks up from the working directory (tests/multiprocess when
// run by go test) to the go.mod of the Resound module.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/resoundhq/resound\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of github.com/resoundhq/resound above the working directory")
		}
		dir = parent
	}
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// freePort returns a loopback port nothing listens on, never the same one
// twice in a run.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		portsMu.Lock()
		used := ports[port]
		ports[port] = true
		portsMu.Unlock()
		if !used {
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// proc is a child process whose stdout and stderr go to one log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process has been waited for
}

// startProc starts bin from binDir with only PATH and env in its
// environment, in a fresh working directory. It is stopped when the test
// ends, and its log's tail is printed if the test failed.
func startProc(t *testing.T, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	return startProcOut(t, name, bin, env, "", args...)
}

// startProcOut is startProc with stdout to the file stdout (when not
// empty) and only stderr to the log.
func startProcOut(t *testing.T, name, bin string, env []string, stdout string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Dir = t.TempDir()
	cmd.Stdout = f
	cmd.Stderr = f
	var out *os.File
	if stdout != "" {
		if out, err = os.Create(stdout); err != nil {
			t.Fatal(err)
		}
		cmd.Stdout = out
	}
	err = cmd.Start()
	_ = f.Close() // the child has its own descriptor
	if out != nil {
		_ = out.Close()
	}
	if err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if out := p.output(); strings.Contains(out, raceWarning) {
			_, report, _ := strings.Cut(out, raceWarning)
			t.Errorf("%s reported a data race:\n%s%s", name, raceWarning, report)
		}
		if t.Failed() {
			t.Logf("--- last lines of %s (%s) ---\n%s", name, logPath, p.tail(40))
			keepLog(t, logPath, stdout)
		}
	})
	return p
}

// keepLog copies a failed test's process logs (and the stdout file, when
// there is one) into $RESOUND_TEST_KEEP/<test>/, since t.TempDir is
// removed after the test: a rare failure (one run in many, under load)
// is understood from the logs of the run that failed.
func keepLog(t *testing.T, paths ...string) {
	dir := os.Getenv("RESOUND_TEST_KEEP")
	if dir == "" {
		return
	}
	dir = filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("keeping logs: %v", err)
		return
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		b, err := os.ReadFile(p)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o644)
		}
		if err != nil {
			t.Logf("keeping %s: %v", p, err)
		}
	}
}

// raceWarning starts every report of the race detector.
const raceWarning = "WARNING: DATA RACE"

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and, if the process has not exited after stopGrace,
// SIGKILL. It returns the exit code (-1 when killed by a signal).
func (p *proc) stop(t *testing.T) int {
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopGrace):
			t.Errorf("%s did not exit within %v of SIGTERM; killing it", p.name, stopGrace)
			p.kill(t)
		}
	}
	return p.cmd.ProcessState.ExitCode()
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *proc) kill(t *testing.T) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		t.Fatalf("%s survived SIGKILL for %v", p.name, stopGrace)
	}
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func (p *proc) tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.output(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// poll waits for cond to hold. It gives up after timeout, or as soon as p
// (if not nil) exits.
func poll(p *proc, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited (code %d) while waiting for %s", p.name, p.cmd.ProcessState.ExitCode(), what)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// waitFor is poll that fails the test.
func waitFor(t *testing.T, p *proc, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := poll(p, timeout, what, cond); err != nil {
		t.Fatal(err)
	}
}

// portTaken tells whether p failed because its port was taken between
// freePort and the bind (another process on the machine got it first).
func (p *proc) portTaken() bool {
	return p.exited() && strings.Contains(p.output(), "address already in use")
}

// bindAttempts is how often a process is retried on fresh ports when the
// free port it was given was taken.
const bindAttempts = 3

// waitLog waits until p's output holds s.
func (p *proc) waitLog(t *testing.T, s string) {
	t.Helper()
	waitFor(t, p, startTimeout, fmt.Sprintf("%q in the output of %s", s, p.name), func() bool {
		return strings.Contains(p.output(), s)
	})
}

// logMessages returns the "message" field of p's JSON log lines at level.
func (p *proc) logMessages(level string) []string {
	var out []string
	for _, line := range strings.Split(p.output(), "\n") {
		var l struct {
			Level   string `json:"level"`
			Message string `json:"message"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Level == level {
			out = append(out, l.Message)
		}
	}
	return out
}

// startNATS runs nats-server with JetStream on loopback and returns its
// client and monitoring URLs once /healthz (which includes JetStream)
// answers 200.
func startNATS(t *testing.T) (clientURL string, monitorURL string) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	for attempt := 1; ; attempt++ {
		port, mport := freePort(t), freePort(t)
		p := startProc(t, "nats-server", "nats-server", nil,
			"-js", "-sd", t.TempDir(), "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-m", strconv.Itoa(mport))
		monitorURL = "http://127.0.0.1:" + strconv.Itoa(mport)
		err := poll(p, startTimeout, "healthy nats-server", func() bool {
			resp, err := hc.Get(monitorURL + "/healthz")
			if err != nil {
				return false
			}
			_ = resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		if err == nil {
			return "nats://127.0.0.1:" + strconv.Itoa(port), monitorURL
		}
		if !p.portTaken() || attempt == bindAttempts {
			t.Fatal(err)
		}
	}
}

// appEnv configures the test app and JSON logs.
func appEnv() []string {
	return []string{
		"REVERB_APP_ID=" + appID, "REVERB_APP_KEY=" + appKey, "REVERB_APP_SECRET=" + secret,
		"RESOUND_LOG_FORMAT=json", "RESOUND_LOG_LEVEL=info",
	}
}

// gatewayProc is a running gateway process.
type gatewayProc struct {
	*proc
	port int
	addr string
	api  *pushertest.API
}

// startGateway runs a gateway against natsURL on port (0: a free one) and
// waits until GET /up answers 200.
func startGateway(t *testing.T, name, natsURL string, port int) *gatewayProc {
	t.Helper()
	env := append(appEnv(), "NATS_URL="+natsURL)
	p, port := startListening(t, name, env, port)
	g := &gatewayProc{proc: p, port: port, addr: "127.0.0.1:" + strconv.Itoa(port)}
	g.api = newAPI(g.addr, appID, appKey, secret)
	return g
}

// startListening starts gateway with env on 127.0.0.1:port and waits for
// GET /up to answer 200 {"health":"OK"}. With port 0 it picks a free port,
// and picks another if that one was taken before the gateway bound it.
func startListening(t *testing.T, name string, env []string, port int) (*proc, int) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		p0 := port
		if p0 == 0 {
			p0 = freePort(t)
		}
		p := launchGateway(t, name, env, p0)
		err := awaitUp(p, p0)
		if err == nil {
			return p, p0
		}
		if port != 0 || !p.portTaken() || attempt == bindAttempts {
			t.Fatal(err)
		}
	}
}

// launchGateway starts gateway with env on 127.0.0.1:port without waiting.
func launchGateway(t *testing.T, name string, env []string, port int) *proc {
	t.Helper()
	return startProc(t, name, "gateway", append(env, "REVERB_SERVER_HOST=127.0.0.1", "REVERB_SERVER_PORT="+strconv.Itoa(port)))
}

// awaitUp waits until the gateway p on port answers GET /up with 200
// {"health":"OK"}.
func awaitUp(p *proc, port int) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	return poll(p, startTimeout, "GET /up 200 from "+p.name, func() bool {
		resp, err := hc.Get("http://" + addr + "/up")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var body map[string]string
		return resp.StatusCode == http.StatusOK && json.Unmarshal(b, &body) == nil && body["health"] == "OK"
	})
}

func newAPI(addr, id, key, sec string) *pushertest.API {
	return &pushertest.API{BaseURL: "http://" + addr, AppID: id, Key: key, Secret: sec,
		Client: &http.Client{Timeout: 10 * time.Second}}
}

// launchWorker starts a worker process without waiting for it.
func launchWorker(t *testing.T, name, natsURL string) *proc {
	t.Helper()
	return startProc(t, name, "worker", append(appEnv(), "NATS_URL="+natsURL, "RESOUND_WORKERS=2", "RESOUND_METRICS_PORT=0"))
}

const workerReady = `"message":"worker started"`

// startWorker starts a worker process and waits for it to log that it
// started.
func startWorker(t *testing.T, name, natsURL string) *proc {
	t.Helper()
	w := launchWorker(t, name, natsURL)
	w.waitLog(t, workerReady)
	return w
}

// runOnce runs bin to completion (bounded) and returns its stdout, stderr
// and exit code.
func runOnce(t *testing.T, bin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, bin), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Dir = t.TempDir()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not exit within %v; stderr:\n%s", bin, args, startTimeout, e.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running %s: %v", bin, err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

func mustOK(t *testing.T, r pushertest.Response) {
	t.Helper()
	if r.Status != http.StatusOK || string(r.Body) != "{}" {
		t.Fatalf("got %d %s, want 200 {}", r.Status, r.Body)
	}
}

// triggerTicks triggers event "tick" with data from..to-1 on channel, in
// order, each acknowledged before the next.
func triggerTicks(t *testing.T, api *pushertest.API, channel string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		mustOK(t, api.Trigger([]string{channel}, "tick", strconv.Itoa(i), ""))
	}
}

// expectTicks reads "tick" events from..to-1 on channel, in order, with
// nothing else in between.
func expectTicks(t *testing.T, c *pushertest.Client, channel string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		// A partition whose worker was killed moves to another within the
		// worker TTL and JetStream's pin: allow for it on the first event.
		m, err := c.Read(30 * time.Second)
		if err != nil {
			t.Fatalf("waiting for tick %d: %v", i, err)
		}
		if m.Event != "tick" || m.Channel != channel || m.DataString() != strconv.Itoa(i) {
			t.Fatalf("tick %d: got %s", i, m.Raw)
		}
	}
}
