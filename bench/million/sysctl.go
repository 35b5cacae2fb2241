//go:build linux

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Sysctl is a kernel setting the run depends on: its value before the
// run, and what the run set it to, if anything.
type Sysctl struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Set   string `json:"set,omitempty"`
	Note  string `json:"note,omitempty"`
}

// sysctlNames are read and reported whether or not the run changes them.
var sysctlNames = []string{
	"fs.file-max", "fs.nr_open", "fs.file-nr",
	"net.ipv4.ip_local_port_range", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
	"net.ipv4.tcp_mem", "net.ipv4.tcp_max_orphans", "net.ipv4.tcp_max_tw_buckets",
	"net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_count",
	"net.core.netdev_max_backlog",
}

func sysctlPath(name string) string { return "/proc/sys/" + strings.ReplaceAll(name, ".", "/") }

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(sysctlPath(name))
	if err != nil {
		return "", err
	}
	return strings.Join(strings.Fields(string(b)), " "), nil
}

func readSysctls() []Sysctl {
	out := make([]Sysctl, 0, len(sysctlNames))
	for _, n := range sysctlNames {
		v, err := readSysctl(n)
		s := Sysctl{Name: n, Value: v}
		if err != nil {
			s.Value, s.Note = "", "absent"
		}
		out = append(out, s)
	}
	return out
}

// want is a sysctl the run needs at least some value of: each of its
// numbers at least the one in min.
type want struct {
	name string
	min  []int64
	why  string
}

// needs are the settings a run of this layout needs. The others it reads
// (the port range, the backlogs, conntrack) it checks against the layout
// instead, in check.
func (l layout) needs() []want {
	return []want{
		// Both ends of every connection are descriptors on this machine,
		// and every process has a few more.
		{"fs.file-max", []int64{int64(2*l.Sockets) + 100_000}, "a descriptor for each end of every connection"},
		// tcp_mem is in pages, for every socket's buffers together. A
		// broadcast puts a frame in flight on every connection at once;
		// each socket with data queued holds at least one page on each
		// end until it is read (see tcpPagesPerConn).
		{"net.ipv4.tcp_mem", []int64{
			int64(float64(l.Sockets) * tcpPagesPerConn / 2),
			int64(float64(l.Sockets) * tcpPagesPerConn),
			int64(float64(l.Sockets) * tcpPagesPerConn * 1.5),
		}, "buffers of a frame in flight on every connection at once (a broadcast)"},
		// Loopback hands every packet to the per-CPU backlog, which drops
		// what is past netdev_max_backlog (default 1,000). The first
		// full run's broadcast put a frame on 1,000,000 connections at
		// once: 44 million packets dropped, retransmissions with 200 ms
		// timeouts, and 765,000 connections aborted on timeout (the
		// gateways' ends gone, the clients' left established, their FIN
		// lost too). A packet per connection in flight.
		{"net.core.netdev_max_backlog", []int64{int64(l.Sockets)}, "a packet in flight on every connection at once on loopback (a broadcast)"},
	}
}

// tcpPagesPerConn is the TCP buffer memory, in pages, that the run plans
// for per connection at its peak (tcp_mem's pressure threshold). Measured
// at 90,000 sockets over 6 gateways: 0.3 pages a connection while a
// broadcast was in flight, 0.9 while the load generators closed every
// connection at once at the end. The defaults here (287,913 / 383,885 /
// 575,826 pages) are short of that for a million.
const tcpPagesPerConn = 1.0

// applied is a sysctl the run changed, to put back at the end.
type applied struct {
	name, old string
}

// ensure raises each setting of needs that is below what it needs, if
// write (writeSysctl) succeeds: the kernel lets this process write it. It
// records what it did in sys, and returns what to restore and the needs it
// could not meet.
func ensure(needs []want, sys []Sysctl, write func(name, value string) error) (restore []applied, unmet []string) {
	for _, w := range needs {
		i := -1
		for j := range sys {
			if sys[j].Name == w.name {
				i = j
			}
		}
		if i < 0 {
			unmet = append(unmet, w.name+": not read")
			continue
		}
		cur, err := parseInts(sys[i].Value)
		if err != nil || len(cur) != len(w.min) {
			unmet = append(unmet, fmt.Sprintf("%s: cannot read it (%q)", w.name, sys[i].Value))
			continue
		}
		next, short := make([]int64, len(cur)), false
		for j := range cur {
			next[j] = max(cur[j], w.min[j])
			short = short || cur[j] < w.min[j]
		}
		if !short {
			continue
		}
		val := joinInts(next)
		if err := write(w.name, val); err != nil {
			sys[i].Note = fmt.Sprintf("needs %s (%s) but cannot be set: %v", val, w.why, err)
			unmet = append(unmet, w.name+": "+sys[i].Note)
			continue
		}
		sys[i].Set = val
		sys[i].Note = "raised for the run (" + w.why + "), restored after"
		restore = append(restore, applied{w.name, sys[i].Value})
	}
	return restore, unmet
}

func writeSysctl(name, value string) error {
	return os.WriteFile(sysctlPath(name), []byte(value+"\n"), 0o644)
}

// restoreSysctls puts back what ensure changed.
func restoreSysctls(rs []applied) []error {
	var errs []error
	for _, r := range rs {
		if err := writeSysctl(r.name, r.old); err != nil {
			errs = append(errs, fmt.Errorf("restoring %s to %s: %w", r.name, r.old, err))
		}
	}
	return errs
}

func parseInts(s string) ([]int64, error) {
	var out []int64
	for _, f := range strings.Fields(s) {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func joinInts(v []int64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatInt(x, 10)
	}
	return strings.Join(s, " ")
}

func sysctlValue(sys []Sysctl, name string) string {
	for _, s := range sys {
		if s.Name == name {
			if s.Set != "" {
				return s.Set
			}
			return s.Value
		}
	}
	return ""
}
