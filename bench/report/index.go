//go:build linux

package main

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/resoundhq/resound/internal/machine"
)

// The app every target is started with and loadgen connects as. They are
// not secrets: the servers listen on loopback only, for the run.
const (
	benchAppID  = "100200"
	benchKey    = "bench-key"
	benchSecret = "bench-secret"
)

// Index is a results directory's table of contents (index.json): what was
// run, on what, and where each run's raw output lies. The report is made
// from it alone, so `-from DIR` can redo the report without the servers.
type Index struct {
	Started     string         `json:"started"`
	Finished    string         `json:"finished,omitempty"`
	Quick       bool           `json:"quick"`
	Repeats     int            `json:"repeats"`
	Interrupted bool           `json:"interrupted,omitempty"`
	Machine     machine.Info   `json:"machine"`
	Targets     []TargetStatus `json:"targets"`
	Workloads   []Workload     `json:"workloads"`
	Runs        []RunRecord    `json:"runs"`
}

// TargetStatus says whether a target ran, and if not, why.
type TargetStatus struct {
	Target
	Ran    bool   `json:"ran"`
	Reason string `json:"reason,omitempty"`
}

// RunRecord is one loadgen run against one fresh server. Paths are
// relative to the results directory.
type RunRecord struct {
	Target     string   `json:"target"`
	Workload   string   `json:"workload"`
	Repeat     int      `json:"repeat"`
	Port       int      `json:"port"`
	PID        int      `json:"pid"`
	Args       []string `json:"args"`
	Summary    string   `json:"summary"`
	LoadgenLog string   `json:"loadgen_log"`
	ServerLog  string   `json:"server_log"`
	ReadySec   float64  `json:"ready_s"`
	Exit       int      `json:"exit"`
	Error      string   `json:"error,omitempty"`
}

// save writes the index atomically, so an interrupted run leaves a
// readable one.
func (x *Index) save(dir string) error {
	b, err := json.MarshalIndent(x, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".index.json.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "index.json"))
}

func loadIndex(dir string) (*Index, error) {
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	var x Index
	if err := json.Unmarshal(b, &x); err != nil {
		return nil, err
	}
	return &x, nil
}
