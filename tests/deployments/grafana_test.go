package deployments

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

var metricRef = regexp.MustCompile(`\bresound_[a-z0-9_]+`)

// metricOf maps a series name in a query to the metric it belongs to
// (histogram series carry _bucket, _sum and _count).
func metricOf(series string) (string, bool) {
	known := map[string]bool{}
	for _, m := range metricNames {
		known[m] = true
	}
	if known[series] {
		return series, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(series, suffix); ok && histogramNames[base] {
			return base, true
		}
	}
	return "", false
}

type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's
}

type grafanaDashboard struct {
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	SchemaVersion int            `json:"schemaVersion"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Query      any    `json:"query"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

func TestGrafanaDashboard(t *testing.T) {
	var d grafanaDashboard
	if err := json.Unmarshal(readFile(t, "grafana/resound-dashboard.json"), &d); err != nil {
		t.Fatalf("resound-dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want a current one (~39)", d.SchemaVersion)
	}

	// A Prometheus data source variable, which every panel uses.
	dsVar := ""
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = v.Name
		}
		// Query variables may reference metrics too.
		q := v.Definition
		if s, ok := v.Query.(string); ok {
			q += " " + s
		} else if m, ok := v.Query.(map[string]any); ok {
			if s, ok := m["query"].(string); ok {
				q += " " + s
			}
		}
		for _, ref := range metricRef.FindAllString(q, -1) {
			if _, ok := metricOf(ref); !ok {
				t.Errorf("variable %s: %s is not a Resound metric", v.Name, ref)
			}
		}
	}
	if dsVar == "" {
		t.Fatal("no Prometheus data source variable (type datasource, query prometheus)")
	}

	used := map[string]bool{}
	ids := map[int]bool{}
	var walk func(panels []grafanaPanel)
	walk = func(panels []grafanaPanel) {
		for _, p := range panels {
			if ids[p.ID] {
				t.Errorf("panel %q: id %d is not unique", p.Title, p.ID)
			}
			ids[p.ID] = true
			if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
				t.Errorf("panel %q: no gridPos", p.Title)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != "${"+dsVar+"}" {
				t.Errorf("panel %q: datasource is not ${%s}", p.Title, dsVar)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q: no queries", p.Title)
			}
			for _, tg := range p.Targets {
				refs := metricRef.FindAllString(tg.Expr, -1)
				if len(refs) == 0 {
					t.Errorf("panel %q, query %s: references no Resound metric: %q", p.Title, tg.RefID, tg.Expr)
				}
				for _, ref := range refs {
					m, ok := metricOf(ref)
					if !ok {
						t.Errorf("panel %q, query %s: %s is not a Resound metric", p.Title, tg.RefID, ref)
						continue
					}
					used[m] = true
				}
				if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") {
					t.Errorf("panel %q, query %s: unbalanced parentheses: %q", p.Title, tg.RefID, tg.Expr)
				}
			}
		}
	}
	walk(d.Panels)
	for _, m := range metricNames {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}

// The metric names agree across the test's list, deployments/README.md and
// what internal/metrics registers.
func TestMetricNames(t *testing.T) {
	want := map[string]bool{}
	for _, m := range metricNames {
		want[m] = true
	}

	readme := string(readFile(t, "README.md"))
	for _, m := range metricNames {
		if !strings.Contains(readme, "`"+m+"`") {
			t.Errorf("deployments/README.md does not list `%s`", m)
		}
	}
	for _, ref := range metricRef.FindAllString(readme, -1) {
		if _, ok := metricOf(ref); !ok {
			t.Errorf("deployments/README.md names %s, which is not a Resound metric", ref)
		}
	}

	// Names registered anywhere under internal/: `Name: "resound_..."`
	// (internal/metrics has most; the webhook recorder and sender register
	// their own).
	var files []string
	err := filepath.WalkDir(filepath.Join(root(t), "internal"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".go") {
			files = append(files, path)
		}
		return err
	})
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files under internal/ (%v)", err)
	}
	nameRe := regexp.MustCompile(`Name:\s*"(resound_[a-z0-9_]+)"`)
	registered := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range nameRe.FindAllStringSubmatch(string(b), -1) {
			registered[m[1]] = true
		}
	}
	var missing, extra []string
	for m := range want {
		if !registered[m] {
			missing = append(missing, m)
		}
	}
	for m := range registered {
		if !want[m] {
			extra = append(extra, m)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		t.Errorf("nothing under internal/ registers %v, which the dashboard and README use", missing)
	}
	if len(extra) > 0 {
		t.Errorf("internal/ registers %v, missing from the dashboard, README and this test's list", extra)
	}
}
