package main

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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds on every wait of the set-up and tear-down.
const (
	buildTimeout = 10 * time.Minute
	startTimeout = 30 * time.Second
	stopGrace    = 15 * time.Second
)

// build compiles the binaries the soak runs into dir, in parallel, the way
// tests/multiprocess does: nats-server from the go.mod tool directive, so
// the soak runs the server version the project pins. With faultinject the
// gateway has the panic hooks of docs/security.md.
func build(ctx context.Context, root, dir string, faultinject bool) error {
	gatewayArgs := []string{"build", "-o", filepath.Join(dir, "gateway")}
	if faultinject {
		gatewayArgs = append(gatewayArgs, "-tags", "faultinject")
	}
	builds := [][]string{
		append(gatewayArgs, "./cmd/gateway"),
		{"build", "-o", filepath.Join(dir, "worker"), "./cmd/worker"},
		{"build", "-o", filepath.Join(dir, "loadgen"), "./cmd/loadgen"},
		{"build", "-o", filepath.Join(dir, "nats-server"), "github.com/nats-io/nats-server/v2"},
	}
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	errs := make([]error, len(builds))
	var wg sync.WaitGroup
	for i, args := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.CommandContext(ctx, "go", args...)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
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

// ports hands out loopback ports nothing listens on, never the same one
// twice in a run.
type ports struct {
	mu   sync.Mutex
	used map[int]bool
}

func (p *ports) free() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used == nil {
		p.used = map[int]bool{}
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		if !p.used[port] {
			p.used[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no free port")
}

// proc is a child process whose stdout and stderr go to a log file (or
// stdout to a file of its own).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	out  string        // the file stdout went to, when not the log
	done chan struct{} // closed once the process has been waited for
}

// startProc starts bin with only PATH and env in its environment. The
// child is in a process group of its own, so that a Ctrl-C on the soak
// reaches the soak alone, which then stops everything in order; and it is
// killed if the soak dies (Pdeathsig), so nothing outlives a crash.
func startProc(name, bin, logDir, workDir string, env []string, stdout string, args ...string) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Dir = workDir
	cmd.Stdout, cmd.Stderr = f, f
	var out *os.File
	if stdout != "" {
		if out, err = os.Create(stdout); err != nil {
			_ = f.Close()
			return nil, err
		}
		cmd.Stdout = out
	}
	cmd.SysProcAttr = procAttr()
	err = cmd.Start()
	_ = f.Close() // the child has its own descriptors
	if out != nil {
		_ = out.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, out: stdout, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and, if the process has not exited after grace,
// SIGKILL. It reports whether the process had to be killed.
func (p *proc) stop(grace time.Duration) (killed bool) {
	if p.exited() {
		return false
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return false
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return true
	}
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// waitFor polls cond until it holds, p exits, ctx ends or timeout passes.
func waitFor(ctx context.Context, p *proc, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited (code %d) while waiting for %s", p.name, p.cmd.ProcessState.ExitCode(), what)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s within %v", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

var probe = &http.Client{Timeout: 2 * time.Second}

// httpOK reports whether GET url answers 200, and the body.
func httpOK(url string) (bool, []byte) {
	resp, err := probe.Get(url)
	if err != nil {
		return false, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode == http.StatusOK, b
}

// gatewayUp is a gateway's readiness: GET /up answers 200 {"health":"OK"}.
func gatewayUp(addr string) bool {
	ok, b := httpOK("http://" + addr + "/up")
	var body map[string]string
	return ok && json.Unmarshal(b, &body) == nil && body["health"] == "OK"
}

// startRetrying starts a process on fresh ports until it is ready, up to
// three times when the port it was given was taken meanwhile by another
// process on this shared machine.
func startRetrying(ctx context.Context, name string, launch func() (*proc, func() bool, error)) (*proc, error) {
	for attempt := 1; ; attempt++ {
		p, ready, err := launch()
		if err != nil {
			return nil, err
		}
		err = waitFor(ctx, p, startTimeout, name+" ready", ready)
		if err == nil {
			return p, nil
		}
		p.stop(stopGrace)
		if !strings.Contains(p.output(), "address already in use") || attempt == 3 {
			return nil, fmt.Errorf("%w; last lines of %s:\n%s", err, p.log, tail(p.output(), 20))
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func itoa(n int) string { return strconv.Itoa(n) }
