//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
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

// child is one process the run started. Its stderr (and stdout, unless
// it goes to a file of its own) is logged to logs/<name>.log. It is in a
// process group of its own, so that a Ctrl-C reaches the run alone, which
// then stops everything in order, and the kernel kills it if the run dies
// (Pdeathsig), so that nothing outlives a crash or a SIGKILL of the run.
type child struct {
	name string
	kind string // nats, gateway, worker, loadgen
	cmd  *exec.Cmd
	log  string
	out  string         // where stdout went, when not the log
	in   io.WriteCloser // stdin, for the load generators' commands
	done chan struct{}  // closed once waited for

	// progress is the last progress line of a load generator (-json
	// -progress): its counts, by field.
	mu       sync.Mutex
	progress map[string]int64
}

type childSpec struct {
	name, kind, bin string
	args, env       []string
	dir             string // working directory
	stdout          string // file for stdout; "" logs it
	stdin           bool   // keep a pipe to stdin
	progress        bool   // parse stderr's JSON progress lines
	// nice, when not 0, is the child's nice value from its first thread
	// on (coreutils' nice execs it; if the kernel refuses, nice says so
	// and runs it at the default).
	nice int
}

// start starts a child with only PATH and spec.env in its environment.
func start(spec childSpec, logDir string) (*child, error) {
	c := &child{name: spec.name, kind: spec.kind, log: filepath.Join(logDir, spec.name+".log"), out: spec.stdout,
		done: make(chan struct{}), progress: map[string]int64{}}
	logf, err := os.Create(c.log)
	if err != nil {
		return nil, err
	}
	c.cmd = exec.Command(spec.bin, spec.args...)
	if spec.nice != 0 {
		// A nice value belongs to a thread and new threads inherit it
		// from the one that makes them: set after the start, on the
		// process's id, it reached only the main thread, and a Go
		// process's other threads (the ones that do its work) stayed at
		// 0. nice sets it before the binary's first instruction.
		c.cmd = exec.Command("nice", append([]string{"-n", strconv.Itoa(spec.nice), spec.bin}, spec.args...)...)
	}
	c.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, spec.env...)
	c.cmd.Dir = spec.dir
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c.cmd.Stdout = logf
	var outf *os.File
	if spec.stdout != "" {
		if outf, err = os.Create(spec.stdout); err != nil {
			_ = logf.Close()
			return nil, err
		}
		c.cmd.Stdout = outf
	}
	var stderr io.ReadCloser
	if spec.progress {
		if stderr, err = c.cmd.StderrPipe(); err != nil {
			return nil, err
		}
	} else {
		c.cmd.Stderr = logf
	}
	if spec.stdin {
		if c.in, err = c.cmd.StdinPipe(); err != nil {
			return nil, err
		}
	}
	err = c.cmd.Start()
	if outf != nil {
		_ = outf.Close() // the child has its own descriptor
	}
	if err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("starting %s: %w", spec.name, err)
	}
	var reading sync.WaitGroup
	if stderr != nil {
		reading.Add(1)
		go func() {
			defer reading.Done()
			c.readProgress(stderr, logf)
		}()
	}
	go func() {
		reading.Wait() // Wait closes the pipe: read it to the end first
		_ = c.cmd.Wait()
		_ = logf.Close()
		close(c.done)
	}()
	return c, nil
}

// readProgress copies a load generator's stderr to its log and keeps the
// counts of its last progress line.
func (c *child) readProgress(r io.Reader, log io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		_, _ = log.Write(append(line, '\n'))
		var m map[string]any
		if json.Unmarshal(line, &m) != nil || m["message"] != "progress" {
			continue
		}
		c.mu.Lock()
		for k, v := range m {
			if f, ok := v.(float64); ok {
				c.progress[k] = int64(f)
			}
		}
		c.mu.Unlock()
	}
	_, _ = io.Copy(log, r)
}

// count is a field of the last progress line (0 before any).
func (c *child) count(field string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.progress[field]
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// command sends a load generator one line of -control.
func (c *child) command(line string) error {
	if c.in == nil {
		return fmt.Errorf("%s takes no commands", c.name)
	}
	_, err := io.WriteString(c.in, line+"\n")
	return err
}

// stop ends the child: SIGTERM, then SIGKILL after grace. It reports
// whether it had to kill.
func (c *child) stop(grace time.Duration) (killed bool) {
	if c.exited() {
		return false
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return false
	case <-time.After(grace):
		// The whole group: a descendant would keep its pipes open.
		_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
		<-c.done
		return true
	}
}

// wait waits for the child to exit on its own, up to d; false if it did
// not.
func (c *child) wait(ctx context.Context, d time.Duration) bool {
	select {
	case <-c.done:
		return true
	case <-time.After(d):
	case <-ctx.Done():
	}
	return false
}

func (c *child) tail(n int) string {
	b, _ := os.ReadFile(c.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// freePorts returns n loopback ports that nothing listened on a moment
// ago, all different. The run starts its servers on them at once; on a
// shared machine another process may take one meanwhile, which the
// server's start-up then reports.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	// Below the kernel's ephemeral range (32768 and up by default): a
	// port taken there and let go is free for anyone's outgoing
	// connection, and with a hundred processes dialling NATS as they
	// start, a worker's metrics port was taken before it could listen
	// (twice in four runs).
	const low, high = 20000, 32768
	out := make([]int, 0, n)
	start := low + rand.IntN(high-low)
	for i := 0; i < high-low && len(out) < n; i++ {
		port := low + (start-low+i)%(high-low)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // in use
		}
		lns = append(lns, ln)
		out = append(out, port)
	}
	if len(out) < n {
		return nil, fmt.Errorf("only %d of %d free ports between %d and %d", len(out), n, low, high)
	}
	return out, nil
}

var probe = &http.Client{Timeout: 2 * time.Second}

// get answers GET url's status and body.
func get(url string) (int, []byte, error) {
	resp, err := probe.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, b, err
}

// waitUntil polls cond every interval until it holds; it fails when
// timeout passes, ctx ends, or one of the children exits.
func waitUntil(ctx context.Context, timeout, interval time.Duration, what string, cond func() bool, watch ...*child) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		for _, c := range watch {
			if c.exited() {
				return fmt.Errorf("%s exited (%v) while waiting for %s; its log ends:\n%s", c.name, c.cmd.ProcessState, what, c.tail(15))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s within %v", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
	return nil
}

// moduleRoot is the directory of Resound's go.mod, at or above the
// working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/resoundhq/resound\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run it inside the Resound repository (no go.mod of github.com/resoundhq/resound above here)")
		}
		dir = parent
	}
}

// build compiles the four binaries into dir, nats-server from the version
// go.mod pins.
func build(ctx context.Context, root, dir string) error {
	pkgs := map[string]string{"gateway": "./cmd/gateway", "worker": "./cmd/worker", "loadgen": "./cmd/loadgen",
		"nats-server": "github.com/nats-io/nats-server/v2"}
	errs := make(chan error, len(pkgs))
	for name, pkg := range pkgs {
		go func() {
			cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, name), pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
			errs <- nil
		}()
	}
	var all []error
	for range pkgs {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

func itoa(n int) string { return strconv.Itoa(n) }
