package browser

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Bounds on every wait. They are generous: the machine runs the rest of
// the suite beside this test. None is an assertion about speed.
const (
	// setupWait bounds the wait for scripts/setup-browser.sh, started in
	// the background at the beginning of the test run.
	setupWait = 8 * time.Minute
	// uiWait bounds one wait for the page to show something.
	uiWait = 30 * time.Second
)

// The viewport of every screenshot.
const viewW, viewH = 1360, 900

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

// chromium returns the path of the chromium binary. If it is not
// installed yet but scripts/setup-browser.sh is installing it, it waits
// for the script; if the script never ran, the test is skipped (the test
// command always runs it); if the script failed, the test fails.
func chromium(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	status := filepath.Join(root, ".resound", "browser-setup.status")
	logPath := filepath.Join(root, ".resound", "browser-setup.log")
	deadline := time.Now().Add(setupWait)
	logged := false
	for {
		b, err := os.ReadFile(status)
		if errors.Is(err, os.ErrNotExist) {
			t.Skip("chromium is not installed and scripts/setup-browser.sh has not run; `go tool task test` runs it (or run it yourself) to test the dashboard in a browser")
		}
		if err != nil {
			t.Fatal(err)
		}
		word, pid, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
		switch word {
		case "ok":
			p, err := exec.LookPath("chromium")
			if err != nil {
				t.Fatalf("scripts/setup-browser.sh reported chromium installed, but it is not on PATH: %v", err)
			}
			return p
		case "failed":
			t.Fatalf("scripts/setup-browser.sh could not install chromium; its log, %s:\n%s", logPath, readTail(logPath))
		case "running":
			if !alive(pid) {
				// Stopped half-way (the run that started it was killed):
				// the status will never change.
				if p, err := exec.LookPath("chromium"); err == nil {
					return p
				}
				t.Fatalf("scripts/setup-browser.sh (pid %s) stopped before installing chromium; run it again. Its log, %s:\n%s", pid, logPath, readTail(logPath))
			}
		default:
			t.Fatalf("%s holds %q", status, b)
		}
		if !logged {
			t.Logf("waiting for scripts/setup-browser.sh to install chromium (at most %v)", setupWait)
			logged = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("scripts/setup-browser.sh did not install chromium within %v; its log, %s:\n%s", setupWait, logPath, readTail(logPath))
		}
		time.Sleep(500 * time.Millisecond)
		if p, err := exec.LookPath("chromium"); err == nil {
			// Installed; the script may still be writing its status.
			return p
		}
	}
}

// alive tells whether the process pid (decimal) still runs.
func alive(pid string) bool {
	n, err := strconv.Atoi(pid)
	if err != nil || n <= 0 {
		return false
	}
	proc, err := os.FindProcess(n)
	if err != nil {
		return false
	}
	err = proc.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

func readTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// page is one headless Chromium with one tab, and what it reported: the
// page's uncaught exceptions, console errors and Content-Security-Policy
// violations.
type page struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	problems []string
}

// newPage starts chromium (stopped when the test ends) and opens a tab.
func newPage(t *testing.T) *page {
	t.Helper()
	path := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.WindowSize(viewW, viewH),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("lang", "en-US"),
		chromedp.UserDataDir(t.TempDir()),
	)
	if os.Geteuid() == 0 {
		// Chromium refuses to run as root inside its sandbox (CI runs as
		// root); the only page it loads is our own.
		opts = append(opts, chromedp.NoSandbox)
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	p := &page{t: t, ctx: ctx}
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})
	// Listen starts the browser and opens the tab.
	err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			p.problem((&chromedp.ExceptionError{ExceptionDetails: ev.ExceptionDetails}).Error())
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, string(a.Value)+a.Description)
				}
				p.problem("console." + string(ev.Type) + ": " + strings.Join(parts, " "))
			}
		case *cdplog.EventEntryAdded:
			// A refused request (api/apps answers 401 before sign-in) is a
			// network entry, expected; a CSP violation is not.
			e := ev.Entry
			if e.Source == cdplog.EntrySourceSecurity || strings.Contains(e.Text, "Content Security Policy") ||
				(e.Level == cdplog.EntryLevelError && e.Source != cdplog.EntrySourceNetwork) {
				p.problem(fmt.Sprintf("log entry (%s, %s): %s", e.Source, e.Level, e.Text))
			}
		}
	})
	if err != nil {
		t.Fatalf("starting chromium (%s): %v", path, err)
	}
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("enabling the log: %v", err)
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(viewW, viewH)); err != nil {
		t.Fatalf("setting the viewport: %v", err)
	}
	return p
}

func (p *page) problem(s string) {
	p.mu.Lock()
	p.problems = append(p.problems, s)
	p.mu.Unlock()
}

// checkClean fails the test for anything the page reported.
func (p *page) checkClean() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.problems {
		p.t.Errorf("the page reported %s", s)
	}
	p.problems = nil
}

// do runs actions with a deadline of uiWait.
func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, uiWait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// click clicks the element a CSS selector finds.
func (p *page) click(sel string) {
	p.t.Helper()
	p.do("clicking "+sel, chromedp.Click(chromedp.CSS(sel)))
}

// typeIn types text into the element a CSS selector finds.
func (p *page) typeIn(sel, text string) {
	p.t.Helper()
	p.do("typing into "+sel, chromedp.SendKeys(chromedp.CSS(sel), text))
}

// evalJS evaluates a JavaScript expression.
func evalJS[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, uiWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// waitJS waits until a JavaScript expression is true.
func (p *page) waitJS(what, expr string) {
	p.t.Helper()
	p.waitJSFor(what, expr, uiWait)
}

func (p *page) waitJSFor(what, expr string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("Boolean("+expr+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no %s within %v (%s; last error %v)", what, timeout, expr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// text returns the text content of the first element a CSS selector
// finds ("" if none).
func (p *page) text(sel string) string {
	p.t.Helper()
	return evalJS[string](p, fmt.Sprintf("(document.querySelector(%q) || {}).textContent || ''", sel))
}

// screenshot saves a PNG of the viewport as name.png in dir.
func (p *page) screenshot(dir, name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, uiWait)
	defer cancel()
	// Let the last frame paint (charts draw on an animation frame).
	_, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](
		"new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))", chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	file := filepath.Join(dir, name+".png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", file)
}

// screenshotDir is RESOUND_SCREENSHOTS (made if need be; relative to the
// module root, so RESOUND_SCREENSHOTS=docs/img works from any directory),
// else the test's artifact directory.
func screenshotDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("RESOUND_SCREENSHOTS")
	if dir == "" {
		return t.ArtifactDir()
	}
	if !filepath.IsAbs(dir) {
		root, err := moduleRoot()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
