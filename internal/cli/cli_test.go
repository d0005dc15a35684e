package cli

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		code     int
		stdout   string
		errSub   string
		noStdout bool
	}{
		{[]string{"-h"}, 0, "-ttl", "", false},
		{[]string{"--help"}, 0, "does things", "", false},
		{[]string{"-version"}, 0, "demo ", "", false},
		{[]string{"-ttl=zz"}, 2, "", "run 'demo -h' for help", true},
		{[]string{"-nope"}, 2, "", "flag provided but not defined: -nope", true},
		{[]string{"-ttl=1s"}, 0, "", "", true},
	} {
		fs := flag.NewFlagSet("demo", flag.ContinueOnError)
		fs.Duration("ttl", 0, "a duration")
		var out bytes.Buffer
		err := Parse(fs, tt.args, &out, "demo does things")
		if got := ExitCode(err); got != tt.code {
			t.Errorf("%v: exit code %d (%v), want %d", tt.args, got, err, tt.code)
		}
		if !strings.Contains(out.String(), tt.stdout) || (tt.noStdout && out.Len() > 0) {
			t.Errorf("%v: stdout %q", tt.args, out.String())
		}
		if tt.errSub != "" && (err == nil || !strings.Contains(err.Error(), tt.errSub) || strings.Contains(err.Error(), "\n")) {
			t.Errorf("%v: error %v, want one line with %q", tt.args, err, tt.errSub)
		}
	}
	if ExitCode(errors.New("boom")) != 1 {
		t.Error("a failure is not exit 1")
	}
}
