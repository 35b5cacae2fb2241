//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runner starts servers and runs loadgen against them.
type runner struct {
	root         string // repository root
	dir          string // this run's results directory
	loadgen      string // loadgen binary
	nextPort     int
	firstPort    int
	settle       time.Duration
	readyTimeout time.Duration
}

// server is one started target. Its script execs the server, so the
// script's pid is the server's, and it leads its own process group, which
// lets stop reach anything it forked too.
type server struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // of Wait, once done is closed
	port int
	log  string
}

func (r *runner) script(t Target) string {
	return filepath.Join(r.root, "bench", "targets", t.Name+".sh")
}

// port returns the next free port. Every server gets a new one, so a run
// never meets the previous run's sockets in TIME_WAIT.
func (r *runner) port() (int, error) {
	for range 200 {
		p := r.nextPort
		r.nextPort++
		if r.nextPort >= r.firstPort+1000 {
			r.nextPort = r.firstPort
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p, nil
	}
	return 0, fmt.Errorf("no free port from %d on", r.firstPort)
}

// start runs the target's script with a fresh data directory and waits
// until it is ready.
func (r *runner) start(ctx context.Context, t Target, data, logPath string) (*server, error) {
	port, err := r.port()
	if err != nil {
		return nil, err
	}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close() // the child has its own descriptor
	cmd := exec.Command("bash", r.script(t))
	cmd.Dir = r.root
	cmd.Env = append(os.Environ(),
		"BENCH_PORT="+strconv.Itoa(port),
		"BENCH_APP_ID="+benchAppID,
		"BENCH_KEY="+benchKey,
		"BENCH_SECRET="+benchSecret,
		"BENCH_DATA="+data,
	)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own process group, so that stop reaches whatever the script
	// forked; and killed with us, should the runner die without stopping it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, done: make(chan struct{}), port: port, log: logPath}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	if err := s.waitReady(ctx, t.ReadyPath, r.readyTimeout); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) url() string { return "http://127.0.0.1:" + strconv.Itoa(s.port) }

// waitReady polls until the port accepts connections (and readyPath, if
// any, answers 200), the process exits, or the timeout passes.
func (s *server) waitReady(ctx context.Context, readyPath string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	addr := "127.0.0.1:" + strconv.Itoa(s.port)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-s.done:
			return fmt.Errorf("exited before it was ready (%v): %s", s.err, lastLine(s.log))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond); err == nil {
			_ = c.Close()
			if readyPath == "" {
				return nil
			}
			if resp, err := client.Get("http://" + addr + readyPath); err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %s", timeout, lastLine(s.log))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM to the server's process group, and SIGKILL if the
// server is still there 15 s later. Once the server has exited the group is
// left alone: its id may no longer be ours.
func (s *server) stop() {
	pgid := s.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-s.done
	}
}

// lastLine is the last non-empty line of a log, to say why a server failed.
func lastLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if l == "" {
		return "(no output)"
	}
	if len(l) > 300 {
		l = l[:300] + "…"
	}
	return l
}

// probe decides whether a target can run at all: its script exists,
// loadgen speaks its protocol, and it starts. The reason is shown in the
// report for a target that cannot.
func (r *runner) probe(ctx context.Context, t Target) (reason string) {
	if _, err := os.Stat(r.script(t)); err != nil {
		return "no bench/targets/" + t.Name + ".sh"
	}
	if t.Protocol != "" && t.Protocol != "pusher" {
		out, _ := exec.Command(r.loadgen, "idle", "-h").CombinedOutput()
		if !bytes.Contains(out, []byte("-protocol")) {
			return "loadgen has no -protocol flag (needed for " + t.Protocol + ")"
		}
	}
	data, err := os.MkdirTemp("", "resound-bench-"+t.Name+"-")
	if err != nil {
		return err.Error()
	}
	defer os.RemoveAll(data)
	dir := filepath.Join(r.dir, t.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err.Error()
	}
	s, err := r.start(ctx, t, data, filepath.Join(dir, "probe-server.log"))
	if err != nil {
		return "bench/targets/" + t.Name + ".sh " + err.Error()
	}
	s.stop()
	return ""
}

// runOnce starts a fresh server, runs one workload against it, and stops
// it. Whatever happens is in the record; err is only for interruption.
func (r *runner) runOnce(ctx context.Context, t Target, w Workload, repeat int) (RunRecord, error) {
	rel := filepath.Join(t.Name, w.ID)
	rec := RunRecord{
		Target: t.Name, Workload: w.ID, Repeat: repeat,
		Summary:    filepath.Join(rel, fmt.Sprintf("run-%d.json", repeat)),
		LoadgenLog: filepath.Join(rel, fmt.Sprintf("run-%d.log", repeat)),
		ServerLog:  filepath.Join(rel, fmt.Sprintf("server-%d.log", repeat)),
		Exit:       -1,
	}
	if err := os.MkdirAll(filepath.Join(r.dir, rel), 0o755); err != nil {
		rec.Error = err.Error()
		return rec, nil
	}
	data, err := os.MkdirTemp("", "resound-bench-"+t.Name+"-")
	if err != nil {
		rec.Error = err.Error()
		return rec, nil
	}
	defer os.RemoveAll(data)

	began := time.Now()
	s, err := r.start(ctx, t, data, filepath.Join(r.dir, rec.ServerLog))
	if err != nil {
		rec.Error = "server " + err.Error()
		return rec, ctx.Err()
	}
	defer s.stop()
	rec.ReadySec = math.Round(time.Since(began).Seconds()*1000) / 1000
	rec.Port, rec.PID = s.port, s.pid()
	rec.Args = w.Args(s.url(), s.pid(), t.Protocol)

	rec.Exit, err = r.loadgenRun(ctx, w, rec)
	if err != nil {
		rec.Error = err.Error()
	}
	select {
	case <-s.done:
		gone := "server exited during the run: " + lastLine(s.log)
		if rec.Error != "" {
			gone = rec.Error + "; " + gone
		}
		rec.Error = gone
	default:
	}
	return rec, ctx.Err()
}

// loadgenRun runs loadgen with the record's arguments, its summary line to
// rec.Summary and its log to rec.LoadgenLog.
func (r *runner) loadgenRun(ctx context.Context, w Workload, rec RunRecord) (int, error) {
	out, err := os.Create(filepath.Join(r.dir, rec.Summary))
	if err != nil {
		return -1, err
	}
	defer out.Close()
	logf, err := os.Create(filepath.Join(r.dir, rec.LoadgenLog))
	if err != nil {
		return -1, err
	}
	defer logf.Close()
	ctx, cancel := context.WithTimeout(ctx, w.budget())
	defer cancel()
	cmd := exec.CommandContext(ctx, r.loadgen, rec.Args...)
	cmd.Dir = r.root
	cmd.Env = append(os.Environ(), "REVERB_APP_ID="+benchAppID, "REVERB_APP_KEY="+benchKey, "REVERB_APP_SECRET="+benchSecret)
	cmd.Stdout, cmd.Stderr = out, logf
	// Interrupt rather than kill, so loadgen still prints what it has.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		return exit.ExitCode(), fmt.Errorf("loadgen exited with status %d: %s", exit.ExitCode(), lastLine(logf.Name()))
	default:
		return -1, err
	}
}

// budget is how long loadgen may take before it is interrupted: far more
// than a healthy run needs, so that only a stuck one hits it.
func (w Workload) budget() time.Duration {
	d, _ := time.ParseDuration(w.Duration)
	drain, _ := time.ParseDuration(w.Drain)
	if w.Drain == "" && !w.idle() && w.Kind != KindChurn {
		drain = 5 * time.Second // loadgen's default
	}
	ramp := time.Duration(float64(w.Conns) / 2000 * float64(time.Second))
	return 2*(d+drain+ramp) + 60*time.Second
}
