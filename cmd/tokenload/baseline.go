package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/tokencache/tokencache/internal/cli"

	"github.com/labstack/echo/v4"
)

// baselineCmd serves one static JSON body on the token route from a bare echo
// instance: no auth, cache or logging. It is the ceiling any echo service
// reaches on this machine, to compare tokencache against.
func baselineCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokenload baseline", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8099", "listen address")
	bodyFile := fs.String("body-file", "", "file with the JSON body to serve (default: a chat-token-sized body)")
	if err := cli.Parse(fs, args, stdout, ""); err != nil {
		return err
	}
	body := []byte(`{"channelId":"load-0","userId":"user-0","role":"viewer","origin":"web","token":"` + strings.Repeat("0", 32) +
		`","mediaChannelKey":"` + strings.Repeat("0", 960) + `","roomId":"load-0","childRoomEnabled":"N","chatApiDomain":"apichat.polyv.net",` +
		`"chatDomain":"chat.polyv.net","issuedAt":"2026-11-22T12:00:00Z","expiresAt":"2026-11-22T18:00:00Z"}`)
	if *bodyFile != "" {
		b, err := os.ReadFile(*bodyFile)
		if err != nil {
			return err
		}
		body = b
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.GET("/v1/channels/:channelId/chat-token", func(c echo.Context) error {
		return c.JSONBlob(http.StatusOK, body)
	})
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok") })
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintf(stderr, "baseline serving %d-byte body on http://%s\n", len(body), ln.Addr())
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
