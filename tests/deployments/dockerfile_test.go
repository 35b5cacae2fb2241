package deployments

import (
	"bufio"
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

type dockerInstr struct {
	cmd  string // upper case
	args string
}

// parseDockerfile returns the instructions, with continuation lines joined
// and comments dropped.
func parseDockerfile(t *testing.T) []dockerInstr {
	t.Helper()
	var out []dockerInstr
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, "Dockerfile")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		full := strings.TrimSpace(cur.String())
		cur.Reset()
		if full == "" {
			continue
		}
		cmd, args, _ := strings.Cut(full, " ")
		out = append(out, dockerInstr{strings.ToUpper(cmd), strings.TrimSpace(args)})
	}
	return out
}

func TestDockerfile(t *testing.T) {
	instrs := parseDockerfile(t)
	type stage struct {
		from, name string
		instrs     []dockerInstr
	}
	var stages []*stage
	for _, in := range instrs {
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := &stage{}
			for i := 0; i < len(f); i++ {
				switch {
				case strings.HasPrefix(f[i], "--"):
				case strings.EqualFold(f[i], "AS") && i+1 < len(f):
					s.name = f[i+1]
					i++
				case s.from == "":
					s.from = f[i]
				}
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stages", len(stages))
	}
	build := stages[0]
	if build.name != "build" {
		t.Errorf("first stage: want FROM ... AS build, got %q AS %q", build.from, build.name)
	}
	if !strings.HasPrefix(build.from, "golang:") {
		t.Errorf("build stage: FROM %s, want a golang image", build.from)
	}
	final := stages[len(stages)-1]
	if final.name == "build" || final.from == build.from {
		t.Errorf("final stage: FROM %s is the build stage's image", final.from)
	}
	if !strings.Contains(final.from, "distroless/static") && final.from != "scratch" {
		t.Errorf("final stage: FROM %s, want distroless static or scratch", final.from)
	}

	// The Go version the builder uses matches go.mod's go directive.
	gomod := string(readRoot(t, "go.mod"))
	goVer := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(gomod)
	argVer := ""
	for _, in := range instrs {
		if in.cmd == "ARG" && strings.HasPrefix(in.args, "GO_VERSION=") {
			argVer = strings.TrimPrefix(in.args, "GO_VERSION=")
		}
	}
	image := strings.ReplaceAll(build.from, "${GO_VERSION}", argVer)
	if goVer == nil || !strings.HasPrefix(strings.TrimPrefix(image, "golang:"), goVer[1]) {
		t.Errorf("build stage image %s (GO_VERSION=%s) does not match go.mod's go %v", build.from, argVer, goVer)
	}

	// Both commands built static, trimmed and stripped.
	var runs strings.Builder
	for _, in := range build.instrs {
		if in.cmd == "RUN" {
			runs.WriteString(in.args + "\n")
		}
	}
	for _, want := range []string{"./cmd/gateway", "./cmd/worker", "CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w"`} {
		if !strings.Contains(runs.String(), want) {
			t.Errorf("build stage: no %s in its RUN steps", want)
		}
	}

	// Final stage: both binaries in /usr/local/bin, a non-root USER, ports,
	// and gateway as the default command.
	var copied, user, expose, cmd string
	for _, in := range final.instrs {
		switch in.cmd {
		case "COPY":
			if strings.Contains(in.args, "--from=build") && strings.HasSuffix(in.args, "/usr/local/bin/") {
				copied = in.args
			}
		case "USER":
			user = in.args
		case "EXPOSE":
			expose += " " + in.args
		case "CMD":
			cmd = in.args
		}
	}
	if !strings.Contains(copied, "gateway") || !strings.Contains(copied, "worker") {
		t.Errorf("final stage: want gateway and worker copied from build into /usr/local/bin/, got %q", copied)
	}
	name, _, _ := strings.Cut(user, ":")
	if user == "" || name == "root" || name == "0" {
		t.Errorf("final stage: USER %q, want a non-root user", user)
	}
	for _, p := range []string{"8080", "9091"} {
		if !strings.Contains(" "+expose+" ", " "+p+" ") {
			t.Errorf("final stage: EXPOSE %q lacks %s", expose, p)
		}
	}
	// The image sets RESOUND_OPS_ADDR, and does not EXPOSE that port, so
	// that `docker run -P` never publishes /metrics or /debug/pprof/.
	env := map[string]string{}
	for _, in := range final.instrs {
		if in.cmd == "ENV" {
			for _, kv := range strings.Fields(in.args) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					env[k] = strings.Trim(v, `"`)
				}
			}
		}
	}
	if _, ops := opsAddr(t, "final stage ENV", env); ops != 0 && strings.Contains(" "+expose+" ", " "+strconv.Itoa(ops)+" ") {
		t.Errorf("final stage: EXPOSE %q includes the operations port %d, which docker run -P would publish", expose, ops)
	}
	var cmdList []string
	if err := json.Unmarshal([]byte(cmd), &cmdList); err != nil || len(cmdList) == 0 {
		t.Errorf("CMD %q: want the exec form (distroless has no shell)", cmd)
	} else if first := cmdList[0]; first != "gateway" && first != "/usr/local/bin/gateway" {
		t.Errorf("CMD %v: want gateway as the default command", cmdList)
	}
	for _, in := range instrs {
		if in.cmd == "HEALTHCHECK" && !strings.HasPrefix(strings.ToUpper(in.args), "NONE") {
			t.Errorf("HEALTHCHECK %s: the distroless image has no shell or client to run it", in.args)
		}
	}
}

// The BuildKit context filter next to the Dockerfile keeps the heavy and
// private parts of the repository out of the context.
func TestDockerIgnore(t *testing.T) {
	patterns := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, "Dockerfile.dockerignore")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "#") {
			patterns[line] = true
		}
	}
	for _, want := range []string{".git", "e2e", ".resound", "bin"} {
		if !patterns[want] {
			t.Errorf("Dockerfile.dockerignore does not exclude %s", want)
		}
	}
	for _, keep := range []string{"go.mod", "go.sum", "cmd", "pkg", "protocol"} {
		if patterns[keep] {
			t.Errorf("Dockerfile.dockerignore excludes %s, which the build needs", keep)
		}
	}
}
