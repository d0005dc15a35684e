package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/testwait"
)

// The three binaries share their command-line manners.
func TestCLIManners(t *testing.T) {
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "../tokencache", "../polyvsim", "../tokenload")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	runBin := func(name string, args ...string) (stdout, stderr string, code int) {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return o.String(), e.String(), code
	}
	for _, name := range []string{"tokencache", "polyvsim", "tokenload attack"} {
		f := strings.Fields(name)
		for _, help := range []string{"-h", "--help"} {
			out, errOut, code := runBin(f[0], append(f[1:], help)...)
			if code != 0 || !strings.Contains(out, "-") || errOut != "" {
				t.Errorf("%s %s: exit %d, stdout %q, stderr %q; want usage on stdout and 0", name, help, code, out, errOut)
			}
		}
		out, errOut, code := runBin(f[0], append(f[1:], "-no-such-flag")...)
		if code != 2 || out != "" || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "-h' for help") {
			t.Errorf("%s -no-such-flag: exit %d, stdout %q, stderr %q; want one line and a hint, exit 2", name, code, out, errOut)
		}
	}
	for _, name := range []string{"tokencache", "polyvsim", "tokenload"} {
		if out, _, code := runBin(name, "-version"); code != 0 || !strings.HasPrefix(out, name+" ") {
			t.Errorf("%s -version = %q, exit %d", name, out, code)
		}
	}
	if out, _, code := runBin("tokencache", "healthcheck", "-h"); code != 0 || !strings.Contains(out, "-addr") {
		t.Errorf("tokencache healthcheck -h = %q, exit %d; want its usage, not a probe", out, code)
	}

	// Each healthcheck probes the -addr given (polyvsim's with a host in
	// it); tokenload baseline serves a /healthz for tokencache's.
	probe := func(server []string, prober string, path string) {
		t.Helper()
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		cmd := exec.Command(filepath.Join(bin, server[0]), append(server[1:], "-addr", addr)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		var errOut string
		var code int
		if !testwait.Until(5*time.Second, func() bool {
			_, errOut, code = runBin(prober, "healthcheck", "-addr", addr)
			return code == 0
		}) {
			t.Fatalf("%s healthcheck -addr %s (%s): exit %d: %s", prober, addr, path, code, errOut)
		}
	}
	probe([]string{"polyvsim"}, "polyvsim", "/stats")
	probe([]string{"tokenload", "baseline"}, "tokencache", "/healthz")
}
