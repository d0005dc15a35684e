package cache_test

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

func Example() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	sim := polyvsim.NewTestServer(polyvsim.Options{AppID: "app", AppSecret: "secret"})
	defer sim.Close()
	client, _ := polyv.New(polyv.Options{AppID: "app", AppSecret: "secret", BaseURL: sim.URL})

	c, err := cache.New(rdb, client, cache.Options{LocalSize: cache.DefaultLocalSize})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	req := polyv.ChatTokenRequest{ChannelID: "2094979", UserID: "1b448be323", Role: "viewer", Origin: "web"}
	for range 3 {
		tok, result, err := c.ChatToken(context.Background(), req)
		fmt.Println(result, len(tok.Token), err)
	}
	fmt.Println("Polyv calls:", sim.Sim.Stats().Issued)
	// Output:
	// miss 32 <nil>
	// hit_local 32 <nil>
	// hit_local 32 <nil>
	// Polyv calls: 1
}
