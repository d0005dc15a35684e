// Command tokenload drives tokencache for load tests, built on vegeta's
// library:
//
//	tokenload attack    load with a configurable viewer mix, and a report
//	tokenload warm      prefetch a token pool through the bulk endpoint
//	tokenload baseline  a minimal echo server with a static body, the ceiling
//	                    any echo service reaches on the machine
//	tokenload compare   side-by-side table of attack reports (make bench-http)
//	tokenload wave      rehearse a join wave and report how the Polyv budget was spent
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tokencache/tokencache/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if err != nil && !errors.Is(err, cli.ErrHelp) {
		fmt.Fprintln(os.Stderr, "tokenload:", err)
	}
	os.Exit(cli.ExitCode(err))
}

const usage = `usage: tokenload <command> [flags]

commands:
  attack     drive tokencache with a viewer mix and report latency, statuses and upstream calls
  warm       prefetch tokens through the bulk endpoint into a JSONL pool
  baseline   serve a static JSON body from a minimal echo server
  compare    print attack reports (-json) side by side with ratios
  wave       rehearse a join wave: viewers of two keys and teachers of a third join at once

Run "tokenload <command> -h" for its flags.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &cli.UsageError{Msg: "no command; run 'tokenload -h' for help"}
	}
	switch args[0] {
	case "attack":
		return attackCmd(ctx, args[1:], stdout, stderr)
	case "warm":
		return warmCmd(ctx, args[1:], stdout, stderr)
	case "baseline":
		return baselineCmd(ctx, args[1:], stdout, stderr)
	case "compare":
		return compareCmd(args[1:], stdout, stderr)
	case "wave":
		return waveCmd(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return cli.ErrHelp
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, "tokenload", cli.Version())
		return cli.ErrHelp
	}
	return &cli.UsageError{Msg: fmt.Sprintf("unknown command %q; run 'tokenload -h' for help", args[0])}
}
