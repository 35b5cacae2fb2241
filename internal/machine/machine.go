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
