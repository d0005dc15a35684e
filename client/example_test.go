package client_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokencache/tokencache/client"
)

func Example() {
	s := startServer(exampleTB{})
	c, err := client.New(s.URL, apiKey, client.Options{CacheSize: 10000})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()

	tok, err := c.ChatToken(ctx, client.ChatTokenRequest{ChannelID: "2094979", UserID: "1b448be323", Role: "viewer", Origin: "web"})
	if err != nil {
		var e *client.Error
		if errors.As(err, &e) && e.Temporary() {
			fmt.Println("try again after", e.RetryAfter)
		}
		return
	}
	fmt.Println(tok.RoomID, len(tok.Token), tok.ExpiresAt.Sub(tok.IssuedAt))
	// Output: 2094979 32 6h0m0s
}

// exampleTB runs startServer outside a test; the process ends the servers.
type exampleTB struct{}

func (exampleTB) Helper()                      {}
func (exampleTB) Fatal(args ...any)            { panic(fmt.Sprint(args...)) }
func (exampleTB) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }
func (exampleTB) Logf(string, ...any)          {}
func (exampleTB) Cleanup(func())               {}
