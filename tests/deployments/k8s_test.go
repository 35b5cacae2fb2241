package deployments

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

type k8sObject struct {
	file string
	doc  map[string]any
}

func (o k8sObject) kind() string { return getString(o.doc, "kind") }
func (o k8sObject) name() string { return getString(o.doc, "metadata", "name") }
func (o k8sObject) String() string {
	return fmt.Sprintf("%s %s (%s)", o.kind(), o.name(), filepath.Base(o.file))
}

// loadK8s returns every object of deployments/k8s/*.yaml except the
// kustomization, and the kustomization.
func loadK8s(t *testing.T) ([]k8sObject, map[string]any) {
	t.Helper()
	dir := filepath.Join(deployDir(t), "k8s")
	files, err := filepath.Glob(filepath.Join(dir, "*.y*ml"))
	if err != nil {
		t.Fatal(err)
	}
	var objs []k8sObject
	var kust map[string]any
	for _, f := range files {
		docs := yamlDocs(t, f)
		if filepath.Base(f) == "kustomization.yaml" {
			kust = docs[0]
			continue
		}
		for _, d := range docs {
			objs = append(objs, k8sObject{f, d})
		}
	}
	if kust == nil {
		t.Fatal("k8s/kustomization.yaml is missing")
	}
	return objs, kust
}

func TestKubernetesObjects(t *testing.T) {
	objs, kust := loadK8s(t)
	kinds := map[string]int{}
	for _, o := range objs {
		if getString(o.doc, "apiVersion") == "" || o.kind() == "" || o.name() == "" {
			t.Errorf("%s: a document without apiVersion, kind or metadata.name", o.file)
		}
		kinds[o.kind()]++
	}
	for kind, min := range map[string]int{
		"Namespace": 1, "ConfigMap": 1, "Secret": 1, "Deployment": 2, "Service": 1,
		"HorizontalPodAutoscaler": 2, "PodDisruptionBudget": 1,
	} {
		if kinds[kind] < min {
			t.Errorf("want at least %d %s, got %d", min, kind, kinds[kind])
		}
	}
	if kinds["Deployment"] != 2 {
		t.Errorf("want exactly 2 Deployments (gateway and worker), got %d", kinds["Deployment"])
	}

	// The kustomization lists exactly the manifest files, and they exist.
	listed := map[string]bool{}
	for _, r := range toStrings(getList(kust, "resources")) {
		listed[r] = true
		if _, err := os.Stat(filepath.Join(deployDir(t), "k8s", r)); err != nil {
			t.Errorf("kustomization.yaml: resource %s: %v", r, err)
		}
	}
	for _, o := range objs {
		if !listed[filepath.Base(o.file)] {
			t.Errorf("kustomization.yaml does not list %s", filepath.Base(o.file))
		}
	}
	if getString(kust, "kind") != "Kustomization" {
		t.Errorf("kustomization.yaml: kind %q", getString(kust, "kind"))
	}
	// One namespace for all of it.
	ns := getString(kust, "namespace")
	for _, o := range objs {
		if o.kind() == "Namespace" {
			if o.name() != ns {
				t.Errorf("%s: kustomization namespace is %q", o, ns)
			}
		} else if got := getString(o.doc, "metadata", "namespace"); got != "" && got != ns {
			t.Errorf("%s: namespace %q, kustomization says %q", o, got, ns)
		}
	}
}

// deploymentInfo gathers what the checks need about one Deployment.
type deploymentInfo struct {
	obj       k8sObject
	role      string // gateway or worker
	container map[string]any
	env       map[string]string // env and envFrom ConfigMaps
	envNames  []string
	ports     map[string]int // named container ports
	// public is the gateway's client port (0 for a worker); scrape is where
	// the process serves /metrics: RESOUND_OPS_ADDR's port on a gateway,
	// RESOUND_METRICS_PORT on a worker (0 if unset).
	public, scrape int
}

// scrapePorts fills public and scrape from the environment, without
// judging it (TestKubernetesDeployments does).
func (d *deploymentInfo) scrapePorts() {
	port := func(s string, def int) int {
		if s == "" {
			return def
		}
		n, _ := strconv.Atoi(s)
		return n
	}
	if d.role == "worker" {
		d.scrape = port(d.env["RESOUND_METRICS_PORT"], defaultMetricsPort)
		return
	}
	d.public = port(d.env["REVERB_SERVER_PORT"], defaultGatewayPort)
	if _, p, err := net.SplitHostPort(d.env["RESOUND_OPS_ADDR"]); err == nil {
		d.scrape = port(p, 0)
	}
}

func deployments(t *testing.T, objs []k8sObject) []deploymentInfo {
	t.Helper()
	configMaps := map[string]map[string]any{}
	for _, o := range objs {
		if o.kind() == "ConfigMap" {
			configMaps[o.name()] = getMap(o.doc, "data")
		}
	}
	var out []deploymentInfo
	for _, o := range objs {
		if o.kind() != "Deployment" {
			continue
		}
		containers := getList(o.doc, "spec", "template", "spec", "containers")
		if len(containers) != 1 {
			t.Errorf("%s: want one container, got %d", o, len(containers))
			continue
		}
		c := containers[0].(map[string]any)
		cmd := toStrings(getList(c, "command"))
		if len(cmd) == 0 {
			t.Errorf("%s: no command: say /usr/local/bin/gateway or /usr/local/bin/worker", o)
			continue
		}
		d := deploymentInfo{obj: o, role: filepath.Base(cmd[0]), container: c, env: map[string]string{}, ports: map[string]int{}}
		if cmd[0] != "/usr/local/bin/"+d.role || (d.role != "gateway" && d.role != "worker") {
			t.Errorf("%s: command %v runs neither /usr/local/bin/gateway nor /usr/local/bin/worker", o, cmd)
		}
		for _, ef := range getList(c, "envFrom") {
			name := getString(ef, "configMapRef", "name")
			if name == "" {
				continue
			}
			data, ok := configMaps[name]
			if !ok {
				t.Errorf("%s: envFrom ConfigMap %s is not in the manifests", o, name)
			}
			for k, v := range data {
				d.env[k] = fmt.Sprint(v)
				d.envNames = append(d.envNames, k)
			}
		}
		for _, e := range getList(c, "env") {
			k := getString(e, "name")
			d.env[k] = getString(e, "value")
			d.envNames = append(d.envNames, k)
		}
		for _, p := range getList(c, "ports") {
			n, _ := getInt(p, "containerPort")
			d.ports[getString(p, "name")] = n
		}
		d.scrapePorts()
		out = append(out, d)
	}
	return out
}

// resolvePort turns a probe's or Service's port (number or name) into a number.
func (d deploymentInfo) resolvePort(v any) (int, bool) {
	switch p := v.(type) {
	case int:
		return p, true
	case string:
		n, ok := d.ports[p]
		return n, ok
	}
	return 0, false
}

func TestKubernetesDeployments(t *testing.T) {
	objs, _ := loadK8s(t)
	deps := deployments(t, objs)
	roles := map[string]bool{}
	var envNames []string
	for _, d := range deps {
		roles[d.role] = true
		envNames = append(envNames, d.envNames...)
		where := d.obj.String()
		pod := getMap(d.obj.doc, "spec", "template", "spec")
		if d.env["RESOUND_LOG_FORMAT"] != "json" {
			t.Errorf("%s: RESOUND_LOG_FORMAT=%q, want json", where, d.env["RESOUND_LOG_FORMAT"])
		}
		// Every server of the 3-node NATS cluster, and three replicas of
		// everything on it.
		if n := len(strings.Split(d.env["NATS_URL"], ",")); d.env["NATS_URL"] == "" || n != 3 {
			t.Errorf("%s: NATS_URL %q, want the 3 NATS servers", where, d.env["NATS_URL"])
		}
		if d.env["RESOUND_NATS_REPLICAS"] != "3" {
			t.Errorf("%s: RESOUND_NATS_REPLICAS=%q, want 3", where, d.env["RESOUND_NATS_REPLICAS"])
		}

		// Probes: readiness (and start-up) on GET /up, liveness on GET
		// /livez (which stays 200 while NATS is away), on the port the
		// process serves them on.
		wantPort := portFrom(t, where, d.env, "REVERB_SERVER_PORT", defaultGatewayPort)
		if d.role == "worker" {
			wantPort = portFrom(t, where, d.env, "RESOUND_METRICS_PORT", defaultMetricsPort)
		}
		for _, probe := range []string{"readinessProbe", "livenessProbe", "startupProbe"} {
			p := getMap(d.container, probe)
			if p == nil {
				if probe != "startupProbe" {
					t.Errorf("%s: no %s", where, probe)
				}
				continue
			}
			want := "/up"
			if probe == "livenessProbe" {
				want = "/livez"
			}
			if path := getString(p, "httpGet", "path"); path != want {
				t.Errorf("%s: %s path %q, want %s", where, probe, path, want)
			}
			port, ok := d.resolvePort(get(p, "httpGet", "port"))
			if !ok || port != wantPort {
				t.Errorf("%s: %s port %v (%d), want %d", where, probe, get(p, "httpGet", "port"), port, wantPort)
			}
		}
		if d.ports[""] != 0 {
			t.Errorf("%s: name every container port, so probes and Services can refer to it", where)
		}
		served := false
		for _, p := range d.ports {
			served = served || p == wantPort
		}
		if !served {
			t.Errorf("%s: no containerPort %d", where, wantPort)
		}

		// Metrics: a gateway serves them on RESOUND_OPS_ADDR only, a
		// worker on RESOUND_METRICS_PORT; the pod annotations point
		// Prometheus there.
		if d.role == "gateway" {
			if _, port := opsAddr(t, where, d.env); port != 0 {
				named := false
				for name, p := range d.ports {
					named = named || (p == port && name != "")
				}
				if !named {
					t.Errorf("%s: no named containerPort %d for RESOUND_OPS_ADDR", where, port)
				}
			}
		}
		ann := getMap(d.obj.doc, "spec", "template", "metadata", "annotations")
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" || getString(ann, "prometheus.io/port") != strconv.Itoa(d.scrape) {
			t.Errorf("%s: pod annotations %v, want prometheus.io/scrape \"true\", path /metrics, port %d (where it serves /metrics)", where, ann, d.scrape)
		}

		// Termination: preStop + drain window fit in the grace period.
		grace, ok := getInt(pod, "terminationGracePeriodSeconds")
		if !ok || grace <= 10 {
			t.Errorf("%s: terminationGracePeriodSeconds %v, want more than 10", where, get(pod, "terminationGracePeriodSeconds"))
		}
		preStop := getMap(d.container, "lifecycle", "preStop")
		if preStop != nil && get(preStop, "exec") != nil {
			t.Errorf("%s: preStop exec needs a shell, which the distroless image lacks: use the sleep action", where)
		}
		sleep, _ := getInt(preStop, "sleep", "seconds")
		if d.role == "gateway" {
			if preStop == nil {
				t.Errorf("%s: no preStop sleep to let endpoints update before the drain", where)
			}
			window := drainWindow(t, where, d.env)
			if need := time.Duration(sleep)*time.Second + window; time.Duration(grace)*time.Second <= need {
				t.Errorf("%s: terminationGracePeriodSeconds %d does not exceed preStop %ds + drain window %v", where, grace, sleep, window)
			}
		}

		// Resources for the HPA's utilization and the scheduler.
		for _, k := range []string{"requests", "limits"} {
			r := getMap(d.container, "resources", k)
			if r["cpu"] == nil || r["memory"] == nil {
				t.Errorf("%s: resources.%s needs cpu and memory", where, k)
			}
		}
		// Non-root, as the image is.
		if get(pod, "securityContext", "runAsNonRoot") != true {
			t.Errorf("%s: securityContext.runAsNonRoot is not true", where)
		}
		// The apps file: RESOUND_APPS_FILE is inside a volume mounted from a Secret.
		checkAppsMount(t, d, objs)
	}
	if !roles["gateway"] || !roles["worker"] {
		t.Errorf("want a gateway and a worker Deployment, got %v", sortedKeys(roles))
	}
	checkEnvNames(t, "k8s", envNames)
}

func checkAppsMount(t *testing.T, d deploymentInfo, objs []k8sObject) {
	where := d.obj.String()
	path := d.env["RESOUND_APPS_FILE"]
	if path == "" {
		if d.env["REVERB_APP_SECRET"] != "" {
			t.Errorf("%s: REVERB_APP_SECRET in plain env: use the Secret", where)
		}
		t.Errorf("%s: no RESOUND_APPS_FILE", where)
		return
	}
	volumes := map[string]map[string]any{}
	for _, v := range getList(d.obj.doc, "spec", "template", "spec", "volumes") {
		volumes[getString(v, "name")] = v.(map[string]any)
	}
	secrets := map[string]map[string]any{}
	for _, o := range objs {
		if o.kind() == "Secret" {
			secrets[o.name()] = o.doc
		}
	}
	for _, m := range getList(d.container, "volumeMounts") {
		dir := getString(m, "mountPath")
		if !strings.HasPrefix(path, dir+"/") {
			continue
		}
		file := strings.TrimPrefix(path, dir+"/")
		vol := volumes[getString(m, "name")]
		secretName := getString(vol, "secret", "secretName")
		sec, ok := secrets[secretName]
		if !ok {
			t.Errorf("%s: %s is mounted from %v, not a Secret in the manifests", where, dir, vol)
			return
		}
		key := file
		for _, it := range getList(vol, "secret", "items") {
			if getString(it, "path") == file {
				key = getString(it, "key")
			}
		}
		if get(sec, "stringData", key) == nil && get(sec, "data", key) == nil {
			t.Errorf("%s: Secret %s has no key %s for RESOUND_APPS_FILE=%s", where, secretName, key, path)
		}
		return
	}
	t.Errorf("%s: nothing is mounted at RESOUND_APPS_FILE=%s", where, path)
}

func TestKubernetesServicesAndScaling(t *testing.T) {
	objs, _ := loadK8s(t)
	deps := deployments(t, objs)
	byName := map[string]deploymentInfo{}
	for _, d := range deps {
		byName[d.obj.name()] = d
	}
	// selects returns the Deployments whose pod labels match a selector.
	selects := func(sel map[string]any) []deploymentInfo {
		var out []deploymentInfo
		for _, d := range deps {
			labels := getMap(d.obj.doc, "spec", "template", "metadata", "labels")
			match := len(sel) > 0
			for k, v := range sel {
				if labels[k] != v {
					match = false
				}
			}
			if match {
				out = append(out, d)
			}
		}
		return out
	}
	scaled := map[string]bool{}
	budgeted := map[string]bool{}
	served := map[string]bool{}
	for _, o := range objs {
		switch o.kind() {
		case "Service":
			targets := selects(getMap(o.doc, "spec", "selector"))
			if len(targets) != 1 {
				t.Errorf("%s: selects %d Deployments, want 1", o, len(targets))
				continue
			}
			d := targets[0]
			served[d.role] = true
			// The container ports the Service reaches, and the Service
			// port of each.
			exposed := map[int]int{}
			for _, p := range getList(o.doc, "spec", "ports") {
				tp := get(p, "targetPort")
				if tp == nil {
					tp = get(p, "port")
				}
				n, ok := d.resolvePort(tp)
				if !ok {
					t.Errorf("%s: targetPort %v is not a port of %s", o, tp, d.obj)
					continue
				}
				exposed[n], _ = getInt(p, "port")
			}
			if port, ok := exposed[d.public]; ok && d.role == "gateway" && port != defaultGatewayPort {
				t.Errorf("%s: port %d, want %d", o, port, defaultGatewayPort)
			}
			// The operations port never shares a Service with the public
			// one, and never leaves the cluster: whatever exposes the
			// public Service (Ingress, LoadBalancer) must not reach
			// /metrics or /debug/pprof/.
			if _, ok := exposed[d.scrape]; ok && d.role == "gateway" {
				if _, public := exposed[d.public]; public {
					t.Errorf("%s: exposes the public port %d and the operations port %d together", o, d.public, d.scrape)
				}
				if typ := getString(o.doc, "spec", "type"); (typ != "" && typ != "ClusterIP") || get(o.doc, "spec", "externalIPs") != nil {
					t.Errorf("%s: exposes the operations port %d outside the cluster (type %q): keep it ClusterIP", o, d.scrape, typ)
				}
			}
			ann := getMap(o.doc, "metadata", "annotations")
			if ann["prometheus.io/scrape"] == "true" {
				port, _ := strconv.Atoi(getString(ann, "prometheus.io/port"))
				if _, ok := exposed[port]; !ok || port != d.scrape || ann["prometheus.io/path"] != "/metrics" {
					t.Errorf("%s: scrape annotations %v, want prometheus.io/path /metrics and prometheus.io/port %d, a port of this Service", o, ann, d.scrape)
				}
			}
		case "HorizontalPodAutoscaler":
			if v := getString(o.doc, "apiVersion"); v != "autoscaling/v2" {
				t.Errorf("%s: apiVersion %s, want autoscaling/v2", o, v)
			}
			ref := getMap(o.doc, "spec", "scaleTargetRef")
			d, ok := byName[getString(ref, "name")]
			if getString(ref, "kind") != "Deployment" || !ok {
				t.Errorf("%s: scaleTargetRef %v is not one of the Deployments", o, ref)
				continue
			}
			scaled[d.role] = true
			cpu := false
			for _, m := range getList(o.doc, "spec", "metrics") {
				cpu = cpu || (getString(m, "type") == "Resource" && getString(m, "resource", "name") == "cpu")
			}
			if !cpu {
				t.Errorf("%s: not CPU-based", o)
			}
			lo, _ := getInt(o.doc, "spec", "minReplicas")
			hi, _ := getInt(o.doc, "spec", "maxReplicas")
			if lo < 1 || hi < lo {
				t.Errorf("%s: minReplicas %d, maxReplicas %d", o, lo, hi)
			}
		case "PodDisruptionBudget":
			if v := getString(o.doc, "apiVersion"); v != "policy/v1" {
				t.Errorf("%s: apiVersion %s, want policy/v1", o, v)
			}
			targets := selects(getMap(o.doc, "spec", "selector", "matchLabels"))
			if len(targets) != 1 {
				t.Errorf("%s: selects %d Deployments, want 1", o, len(targets))
				continue
			}
			budgeted[targets[0].role] = true
		}
	}
	for _, want := range []struct {
		what string
		got  map[string]bool
		need []string
	}{
		{"Service", served, []string{"gateway", "worker"}},
		{"HorizontalPodAutoscaler", scaled, []string{"gateway", "worker"}},
		{"PodDisruptionBudget", budgeted, []string{"gateway"}},
	} {
		for _, role := range want.need {
			if !want.got[role] {
				got := sortedKeys(want.got)
				sort.Strings(got)
				t.Errorf("no %s for the %s (have %v)", want.what, role, got)
			}
		}
	}
}
