// Package machine describes the machine a benchmark or a soak ran on, for
// the reports: on a shared 2-core box the numbers mean little without it.
package machine

import (
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Info is what the numbers were measured on.
type Info struct {
	CPUs        int    `json:"nproc"`
	CPUModel    string `json:"cpu_model"`
	MemTotalGiB string `json:"mem_total_gib"`
	Kernel      string `json:"kernel"`
	Go          string `json:"go"`
	LoadStart   string `json:"loadavg_start"`
	LoadEnd     string `json:"loadavg_end,omitempty"`
	OpenFiles   string `json:"open_files,omitempty"`
}

// Read reads /proc; a field it cannot read stays "unknown".
func Read() Info {
	m := Info{CPUs: runtime.NumCPU(), Go: runtime.Version(), CPUModel: "unknown", MemTotalGiB: "unknown", Kernel: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for l := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					if kib, err := strconv.ParseFloat(f[0], 64); err == nil {
						m.MemTotalGiB = strconv.FormatFloat(kib/(1<<20), 'f', 1, 64)
					}
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.LoadStart = LoadAvg()
	return m
}

// LoadAvg is the 1, 5 and 15 minute load: on a shared machine it tells
// how much else was running.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// Busy is the machine's non-idle CPU seconds since boot, summed over
// cores: the "cpu" line of /proc/stat less idle, iowait and guest time
// (already counted in user). On a shared machine, what it grows by beyond
// a run's own processes is what else ran. 0 if /proc/stat cannot be read.
func Busy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, v := range f[1:] {
		// user nice system idle iowait irq softirq steal guest guest_nice
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0
		}
		busy += n
	}
	return busy / 100 // USER_HZ: 100 wherever Go runs on Linux
}
