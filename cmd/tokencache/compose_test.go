package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// TestComposeFile loads docker-compose.yml with the Compose spec's own loader
// and checks it against the code: services, env names and healthchecks.
func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	project, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  "../..",
		ConfigFiles: []types.ConfigFile{{Filename: "docker-compose.yml", Content: b}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) { o.SetProjectName("tokencache", true); o.Profiles = []string{"*"} })
	if err != nil {
		t.Fatalf("compose file does not load: %v", err)
	}
	var c Config
	known := map[string]bool{}
	for _, s := range c.settings() {
		known[s.env] = true
	}
	for _, name := range []string{"redis", "polyvsim", "tokencache-1", "tokencache-2", "tokenload"} {
		svc, ok := project.Services[name]
		if !ok {
			t.Errorf("service %s is missing", name)
			continue
		}
		if name != "tokenload" && (svc.HealthCheck == nil || len(svc.HealthCheck.Test) == 0) {
			t.Errorf("service %s has no healthcheck", name)
		}
		if strings.HasPrefix(name, "tokencache-") {
			for env := range svc.Environment {
				if !known[env] {
					t.Errorf("%s sets %s, which tokencache does not read", name, env)
				}
			}
			if !strings.HasPrefix(*svc.Environment["REDIS_URL"], "redis://redis:") {
				t.Errorf("%s does not share the redis service", name)
			}
			env := map[string]string{}
			for k, v := range svc.Environment {
				env[k] = *v
			}
			if _, err := loadConfig(nil, envFunc(env), nil); err != nil {
				t.Errorf("%s's settings do not start tokencache: %v", name, err)
			}
			if svc.HealthCheck.Test[1] != "/usr/local/bin/tokencache" || svc.HealthCheck.Test[2] != "healthcheck" {
				t.Errorf("%s healthcheck = %v", name, svc.HealthCheck.Test)
			}
		}
	}
	if p := project.Services["tokenload"].Profiles; !slices.Contains(p, "load") {
		t.Errorf("tokenload profiles = %v, want load", p)
	}
}

// TestDockerfileBuild runs the Dockerfile's own go build line, so the image
// build cannot rot unseen where no Docker engine runs.
func TestDockerfileBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary")
	}
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 go build .*) -o /out/ (.*)$`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatal("no go build line in the Dockerfile")
	}
	out := t.TempDir()
	cmd := exec.Command("sh", "-c", m[1]+" -o "+out+"/ "+m[2])
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "VERSION=v9.9.9-test") // as the ARG gives it
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, msg)
	}
	for _, bin := range []string{"tokencache", "polyvsim"} {
		if _, err := os.Stat(filepath.Join(out, bin)); err != nil {
			t.Errorf("the build made no %s: %v", bin, err)
		}
	}
	// -version is stamped, though the image's build has no VCS data.
	if v, err := exec.Command(filepath.Join(out, "tokencache"), "-version").Output(); err != nil || !strings.Contains(string(v), "v9.9.9-test") {
		t.Errorf("tokencache -version = %q, %v; want the stamped version", v, err)
	}
	// Static: the distroless base has no libc.
	if out, err := exec.Command("file", filepath.Join(out, "tokencache")).Output(); err == nil && !strings.Contains(string(out), "statically linked") {
		t.Errorf("tokencache is not static: %s", out)
	}
}

// Every external base image is pinned by digest, and the default (last)
// target holds the server binary alone.
func TestDockerfilePinsAndTargets(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	stages := map[string]bool{}
	var last []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "FROM" {
			if !stages[f[1]] && !regexp.MustCompile(`@sha256:[0-9a-f]{64}$`).MatchString(f[1]) {
				t.Errorf("base image %s is not pinned by digest", f[1])
			}
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				stages[f[3]] = true
			}
			last = nil
		}
		if len(f) > 0 && f[0] == "COPY" {
			last = append(last, line)
		}
	}
	if len(last) != 1 || !strings.Contains(last[0], "/out/tokencache ") {
		t.Errorf("the default target copies %q, want the server binary alone", last)
	}
}
