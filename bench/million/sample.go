//go:build linux

package main

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"time"
)

// Kinds of process, as samples and the summary group them.
const (
	kindNATS    = "nats"
	kindGateway = "gateway"
	kindWorker  = "worker"
	kindLoadgen = "loadgen"
	// kindHarness is this process: its sampling and the NATS client that
	// counts the bucket writes.
	kindHarness = "harness"
)

var kinds = []string{kindGateway, kindLoadgen, kindNATS, kindWorker, kindHarness}

// Group is a kind of process in one sample: summed over its processes.
type Group struct {
	// RSS is the resident memory in bytes of those alive now.
	RSS int64 `json:"rss"`
	// CPU is user + system seconds so far, of those alive now and of
	// those that exited since the run began (their last reading), so that
	// it only grows.
	CPU   float64 `json:"cpu_s"`
	Alive int     `json:"alive"`
}

// Kernel is the machine-wide memory the sockets cost the kernel.
type Kernel struct {
	// From /proc/meminfo, bytes.
	Slab         int64 `json:"slab"`
	SUnreclaim   int64 `json:"sunreclaim"`
	MemAvailable int64 `json:"mem_available"`
	// From /proc/net/sockstat: TCP sockets in use, and the pages of
	// buffer memory they hold (the "mem" the tcp_mem sysctl bounds).
	TCPInUse   int64 `json:"tcp_inuse"`
	TCPMemPage int64 `json:"tcp_mem_pages"`
	TCPTW      int64 `json:"tcp_tw"`
}

// Sample is the run at one moment, every second.
type Sample struct {
	T     float64          `json:"t_s"` // since the load generators started
	Phase string           `json:"phase"`
	Procs map[string]Group `json:"procs"`
	// The load generators' last progress lines, summed.
	Attempted     int64  `json:"attempted"`
	Subscribed    int64  `json:"subscribed"`
	Failed        int64  `json:"failed"`
	Dropped       int64  `json:"dropped"`
	Reconnects    int64  `json:"reconnects"`
	Deliveries    int64  `json:"deliveries"`
	AllDeliveries int64  `json:"all_deliveries"`
	EventsSent    int64  `json:"events_sent"`
	Kernel        Kernel `json:"kernel"`
	// MachineBusy is the machine's busy CPU seconds so far, over all
	// cores (/proc/stat): what else ran shows as busy beyond the run's.
	MachineBusy float64 `json:"machine_busy_s"`
	// KV counts the writes attempted on the shared-state buckets so far
	// (seen on their subjects) and stored (their streams' last sequence),
	// by bucket.
	KV map[string]KVCount `json:"kv,omitempty"`
	// JSAPI counts the JetStream API requests so far.
	JSAPI JSAPICount `json:"js_api"`

	at time.Time
}

// KVCount is one bucket's compare-and-set traffic.
type KVCount struct {
	Attempts uint64 `json:"attempts"`
	Stored   uint64 `json:"stored"`
}

// JSAPICount is JetStream API traffic: every request, and the reads of a
// bucket's key among them.
type JSAPICount struct {
	Requests uint64 `json:"requests"`
	KVReads  uint64 `json:"kv_reads"`
}

// procStat reads a process's CPU seconds (utime + stime) and resident
// bytes from /proc/<pid>/stat: one small read, cheap enough for a hundred
// processes every second (their fd directories, with 17k entries each,
// are not).
func procStat(pid int) (cpu float64, rss int64, ok bool) {
	f, ok := statFields("/proc/" + strconv.Itoa(pid) + "/stat")
	// After ")": state is field 3, utime 14, stime 15, rss 24 (pages).
	if !ok || len(f) < 22 {
		return 0, 0, false
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	s, err2 := strconv.ParseFloat(f[12], 64)
	pages, err3 := strconv.ParseInt(f[21], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, false
	}
	return (u + s) / clockTick, pages * int64(os.Getpagesize()), true
}

// statFields reads a /proc stat file (a process's or a thread's) and
// returns its fields after the command, from the state (field 3) on.
func statFields(path string) ([]string, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	// The command (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, false
	}
	return strings.Fields(string(b[i+1:])), true
}

// clockTick is USER_HZ, the unit of /proc's CPU times: 100 wherever Go
// runs on Linux.
const clockTick = 100

// readKernel reads /proc/meminfo and /proc/net/sockstat.
func readKernel() Kernel {
	var k Kernel
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			name, rest, ok := strings.Cut(l, ":")
			f := strings.Fields(rest)
			if !ok || len(f) == 0 {
				continue
			}
			kib, _ := strconv.ParseInt(f[0], 10, 64)
			switch name {
			case "Slab":
				k.Slab = kib << 10
			case "SUnreclaim":
				k.SUnreclaim = kib << 10
			case "MemAvailable":
				k.MemAvailable = kib << 10
			}
		}
	}
	if b, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			rest, ok := strings.CutPrefix(l, "TCP:")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			for i := 0; i+1 < len(f); i += 2 {
				v, _ := strconv.ParseInt(f[i+1], 10, 64)
				switch f[i] {
				case "inuse":
					k.TCPInUse = v
				case "mem":
					k.TCPMemPage = v
				case "tw":
					k.TCPTW = v
				}
			}
		}
	}
	return k
}
