package adversarial

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/attack"
	"github.com/resoundhq/resound/pkg/pushertest"
)

// The app every gateway here serves, through REVERB_APP_*.
const (
	appID  = "424242"
	appKey = "adversarial-key"
	secret = "adversarial-secret"
)

// Client addresses. Loopback has all of 127/8, so each party has its own
// IP and no per-IP cap one of them bites on reaches another. 127.0.0.1 is
// kept for the proxy of the trusted-proxy tests.
const (
	proxyIP     = "127.0.0.1"
	attackerIP  = "127.0.0.2"
	otherIP     = "127.0.0.3"
	spooferIP   = "127.0.0.4"
	harnessIP   = "127.0.0.8" // readiness, /metrics and the alive check
	bystanderIP = "127.0.0.9"
)

// Bounds on every wait.
const (
	startTimeout = 30 * time.Second
	stopGrace    = 10 * time.Second
	buildTimeout = 5 * time.Minute
)

// binDir holds the gateway built with -tags faultinject, once, by TestMain.
var binDir string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if runtime.GOOS != "linux" {
		// The gateway's reactor is epoll, and the checks read /proc:
		// every test skips (binDir stays empty).
		return m.Run()
	}
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "adversarial:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "resound-adversarial-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "adversarial:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "faultinject", "-o", filepath.Join(dir, "gateway"), "./cmd/gateway")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "adversarial: go build -tags faultinject ./cmd/gateway: %v\n%s", err, out)
		return 1
	}
	binDir = dir
	return m.Run()
}

// moduleRoot walks up from the working directory to the Resound go.mod.
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
// environment. It is stopped when the test ends, and its log's tail is
// printed if the test failed.
func startProc(t *testing.T, name, bin string, env []string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, bin))
	base := []string{"PATH=" + os.Getenv("PATH")}
	if r := os.Getenv("RESOUND_REACTOR"); r != "" {
		// The suite runs again over the portable reactor (Taskfile test:go).
		base = append(base, "RESOUND_REACTOR="+r)
	}
	cmd.Env = append(base, env...)
	cmd.Dir = t.TempDir()
	cmd.Stdout = f
	cmd.Stderr = f
	err = cmd.Start()
	_ = f.Close() // the child has its own descriptor
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
		if t.Failed() {
			t.Logf("--- last lines of %s (%s) ---\n%s", name, logPath, p.tail(30))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM and, if the process has not exited after stopGrace,
// SIGKILL.
func (p *proc) stop(t *testing.T) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		t.Errorf("%s did not exit within %v of SIGTERM; killing it", p.name, stopGrace)
		_ = p.cmd.Process.Kill()
		<-p.done
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

// poll waits for cond to hold; it gives up after timeout, or as soon as p
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
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func waitFor(t *testing.T, p *proc, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := poll(p, timeout, what, cond); err != nil {
		t.Fatal(err)
	}
}

// harnessClient makes the harness's own HTTP requests from harnessIP.
func harnessClient() *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(harnessIP)}}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// gateway is an all-in-one gateway process: no NATS_URL, so it embeds
// JetStream and runs the workers, in a data directory of its own.
type gateway struct {
	*proc
	addr    string // public: WebSocket and HTTP API
	opsAddr string // RESOUND_OPS_ADDR: /metrics
	target  attack.Target
}

// startGateway runs a fresh gateway with settings (NAME=value) on top of
// the test app, and waits until GET /up answers 200.
func startGateway(t *testing.T, settings ...string) *gateway {
	t.Helper()
	if binDir == "" {
		t.Skip("the adversarial suite needs Linux")
	}
	for attempt := 1; ; attempt++ {
		port, ops := freePort(t), freePort(t)
		env := []string{
			"REVERB_APP_ID=" + appID, "REVERB_APP_KEY=" + appKey, "REVERB_APP_SECRET=" + secret,
			"REVERB_SERVER_HOST=127.0.0.1", "REVERB_SERVER_PORT=" + strconv.Itoa(port),
			"RESOUND_OPS_ADDR=127.0.0.1:" + strconv.Itoa(ops),
			"RESOUND_DATA_DIR=" + t.TempDir(), "RESOUND_LOG_FORMAT=json", "RESOUND_LOG_LEVEL=info", "RESOUND_PPROF=true",
		}
		p := startProc(t, "gateway", "gateway", append(env, settings...))
		g := &gateway{proc: p, addr: "127.0.0.1:" + strconv.Itoa(port), opsAddr: "127.0.0.1:" + strconv.Itoa(ops),
			target: attack.Target{Addr: "127.0.0.1:" + strconv.Itoa(port), AppID: appID, Key: appKey, Secret: secret}}
		hc := harnessClient()
		err := poll(p, startTimeout, "GET /up 200", func() bool {
			resp, err := hc.Get("http://" + g.addr + "/up")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			var body map[string]string
			return resp.StatusCode == http.StatusOK && json.Unmarshal(b, &body) == nil && body["health"] == "OK"
		})
		if err == nil {
			return g
		}
		if !p.exited() || !strings.Contains(p.output(), "address already in use") || attempt == 3 {
			t.Fatal(err)
		}
	}
}

// api signs HTTP API requests from source, each on a connection of its
// own: no idle connection is left for settle to count.
func (g *gateway) api(source string) *pushertest.API { return g.target.API(source, false) }
