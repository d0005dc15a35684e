// Package cli gives the three commands the same manners: -h prints usage to
// stdout and exits 0, a bad flag prints one line and a hint and exits 2, and
// -version prints the module version and VCS revision.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
)

// ErrHelp says usage was printed on request: exit 0.
var ErrHelp = errors.New("help printed")

// UsageError is a bad command line: exit 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Parse parses args into fs. On -h it prints usage (the text, then the
// flags) to stdout and returns ErrHelp; on -version it prints Version and
// returns ErrHelp; on a bad flag it returns a *UsageError naming the flag
// and how to get help. It prints nothing else.
func Parse(fs *flag.FlagSet, args []string, stdout io.Writer, usage string) error {
	version := fs.Bool("version", false, "print the version and exit")
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		PrintUsage(fs, stdout, usage)
		return ErrHelp
	case err != nil:
		return &UsageError{Msg: fmt.Sprintf("%v; run '%s -h' for help", err, fs.Name())}
	case *version:
		fmt.Fprintln(stdout, fs.Name(), Version())
		return ErrHelp
	}
	return nil
}

// PrintUsage writes usage, then the flags with their defaults, to w.
func PrintUsage(fs *flag.FlagSet, w io.Writer, usage string) {
	if usage != "" {
		fmt.Fprintln(w, usage)
	}
	fmt.Fprintln(w, "\nflags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// stamped is the version given at build time (make build and the Dockerfile
// set it from git describe): builds without VCS data, as in an image, know
// it only so.
var stamped string

// Version is the version stamped at build time, or else the module version
// and VCS revision the binary was built from.
func Version() string {
	if stamped != "" {
		return stamped
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v, rev, dirty := info.Main.Version, "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" {
		v += " " + rev
		if dirty {
			v += "+dirty"
		}
	}
	return v
}

// ExitCode maps a command's error to its exit status.
func ExitCode(err error) int {
	var usage *UsageError
	switch {
	case err == nil, errors.Is(err, ErrHelp):
		return 0
	case errors.As(err, &usage):
		return 2
	}
	return 1
}
