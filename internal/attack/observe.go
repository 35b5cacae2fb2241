package attack

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Sample is one series of a Prometheus text exposition.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics is a scrape of a /metrics page.
type Metrics []Sample

// Scrape reads http://addr/metrics (the gateway's RESOUND_OPS_ADDR).
func Scrape(ctx context.Context, addr string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics on %s: %d", addr, resp.StatusCode)
	}
	return ParseMetrics(body)
}

// ParseMetrics parses the Prometheus text format (comments skipped).
func ParseMetrics(body []byte) (Metrics, error) {
	var out Metrics
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseSample(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	rest := line
	if i := strings.IndexAny(line, "{ "); i < 0 {
		return s, fmt.Errorf("no value")
	} else {
		s.Name, rest = line[:i], line[i:]
	}
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, " ,")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				return s, fmt.Errorf("bad labels")
			}
			name := rest[:eq]
			rest = rest[eq+2:]
			var val strings.Builder
			for {
				if rest == "" {
					return s, fmt.Errorf("unterminated label value")
				}
				c := rest[0]
				rest = rest[1:]
				if c == '"' {
					break
				}
				if c == '\\' && rest != "" {
					switch rest[0] {
					case 'n':
						c = '\n'
					default:
						c = rest[0]
					}
					rest = rest[1:]
				}
				val.WriteByte(c)
			}
			s.Labels[name] = val.String()
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, err
	}
	s.Value = v
	return s, nil
}

// Sum adds the values of name's series whose labels include the given
// pairs ("limit", "request_head"); 0 when there are none.
func (m Metrics) Sum(name string, labels ...string) float64 {
	var sum float64
	for _, s := range m {
		if s.Name == name && s.matches(labels) {
			sum += s.Value
		}
	}
	return sum
}

// Series counts name's series ("" counts every series).
func (m Metrics) Series(name string) int {
	n := 0
	for _, s := range m {
		if name == "" || s.Name == name {
			n++
		}
	}
	return n
}

func (s Sample) matches(labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		if s.Labels[labels[i]] != labels[i+1] {
			return false
		}
	}
	return true
}

// LimitHits is resound_limit_hits_total{limit}.
func (m Metrics) LimitHits(limit string) float64 {
	return m.Sum("resound_limit_hits_total", "limit", limit)
}

// Panics is resound_panics_total{where}.
func (m Metrics) Panics(where string) float64 {
	return m.Sum("resound_panics_total", "where", where)
}

// Proc is what the kernel says about a process.
type Proc struct {
	RSS int64 // bytes resident (VmRSS)
	FDs int   // open descriptors
}

// ReadProc reads /proc/<pid>/status and /proc/<pid>/fd.
func ReadProc(pid int) (Proc, error) {
	var p Proc
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return p, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return p, fmt.Errorf("VmRSS line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return p, err
			}
			p.RSS = kb << 10
		}
	}
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return p, err
	}
	p.FDs = len(ents)
	return p, nil
}

// RSSWatch samples a process's RSS until stopped and keeps the peak, so
// that a bound holds during an attack and not only after it.
type RSSWatch struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	peak int64
}

// WatchRSS samples pid's RSS every interval.
func WatchRSS(pid int, interval time.Duration) *RSSWatch {
	w := &RSSWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if p, err := ReadProc(pid); err == nil {
				w.mu.Lock()
				w.peak = max(w.peak, p.RSS)
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Stop ends sampling and returns the peak RSS in bytes.
func (w *RSSWatch) Stop() int64 {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak
}

// TCPCounters reads the kernel's TCP counters (/proc/net/netstat and
// /proc/net/snmp: "TcpExt:BeyondWindow", "TcpExt:TCPRcvQDrop", ...) of
// the network namespace. They count for every socket of the machine, not
// only an attack's, but a segment the kernel dropped shows there and
// nowhere else: with them, a stalled connection says whether the server
// stopped reading or the kernel stopped delivering.
func TCPCounters() (map[string]int64, error) {
	out := map[string]int64{}
	for _, f := range []string{"/proc/net/netstat", "/proc/net/snmp"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		// Lines come in pairs: "TcpExt: Name1 Name2 ..." then
		// "TcpExt: 1 2 ...".
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) != len(values) || len(names) == 0 || names[0] != values[0] {
				return nil, fmt.Errorf("%s: unpaired lines %q", f, lines[i])
			}
			for j := 1; j < len(names); j++ {
				v, err := strconv.ParseInt(values[j], 10, 64)
				if err == nil {
					out[names[0]+names[j]] = v
				}
			}
		}
	}
	return out, nil
}

// TCPDrops is what grew, since before, of the counters that say the
// kernel dropped or gave up on TCP segments, e.g. "TcpExt:TCPRcvQDrop +3";
// "none" when nothing did.
func TCPDrops(before map[string]int64) string {
	now, err := TCPCounters()
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, k := range []string{"TcpExt:BeyondWindow", "TcpExt:TCPRcvQDrop", "TcpExt:RcvPruned", "TcpExt:OfoPruned",
		"TcpExt:TCPZeroWindowDrop", "TcpExt:TCPBacklogDrop", "TcpExt:PAWSEstab", "TcpExt:TCPACKSkippedSeq",
		"TcpExt:TCPTimeouts", "TcpExt:TCPAbortOnMemory", "TcpExt:TCPAbortOnTimeout", "TcpExt:TCPAbortOnData",
		"TcpExt:TCPMemoryPressures", "TcpExt:ListenOverflows"} {
		if d := now[k] - before[k]; d != 0 {
			out = append(out, fmt.Sprintf("%s +%d", k, d))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}
