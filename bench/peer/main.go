// Command peer is the token service a team would write in an afternoon with
// go-redis/cache instead of running tokencache: echo, cache.Once (Redis plus
// an optional TinyLFU local cache, singleflight within one process), no
// logging, metrics or auth. It exists only as the baseline of
// `make bench-http` and lives in its own module so that tokencache does not
// depend on go-redis/cache.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"time"

	"github.com/go-redis/cache/v9"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/polyv"
)

// tokenBody has the fields and JSON names of tokencache's answer, so both
// services write bodies of the same size.
type tokenBody struct {
	ChannelID        string    `json:"channelId"`
	UserID           string    `json:"userId"`
	Role             string    `json:"role"`
	Origin           string    `json:"origin"`
	Token            string    `json:"token"`
	MediaChannelKey  string    `json:"mediaChannelKey"`
	RoomID           string    `json:"roomId"`
	ChildRoomEnabled string    `json:"childRoomEnabled"`
	ChatAPIDomain    string    `json:"chatApiDomain"`
	ChatDomain       string    `json:"chatDomain"`
	IssuedAt         time.Time `json:"issuedAt"`
	ExpiresAt        time.Time `json:"expiresAt"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8090", "listen address")
	redisURL := flag.String("redis", "redis://127.0.0.1:6379", "Redis URL")
	polyvURL := flag.String("polyv", "http://127.0.0.1:8091", "Polyv (or simulator) base URL")
	local := flag.Int("local", 10000, "TinyLFU local cache size; 0 for Redis only")
	flag.Parse()

	ropts, err := redis.ParseURL(*redisURL)
	if err != nil {
		log.Fatal(err)
	}
	ropts.ReadTimeout, ropts.WriteTimeout = 300*time.Millisecond, 300*time.Millisecond
	opts := &cache.Options{Redis: redis.NewClient(ropts)}
	if *local > 0 {
		opts.LocalCache = cache.NewTinyLFU(*local, time.Minute)
	}
	tokens := cache.New(opts)
	upstream, err := polyv.New(polyv.Options{AppID: "sim-app", AppSecret: "sim-secret", BaseURL: *polyvURL})
	if err != nil {
		log.Fatal(err)
	}

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.GET("/healthz", func(c echo.Context) error { return c.NoContent(http.StatusOK) })
	e.GET("/v1/channels/:channelId/chat-token", func(c echo.Context) error {
		req := polyv.ChatTokenRequest{
			ChannelID: c.Param("channelId"), UserID: c.QueryParam("userId"),
			Role: c.QueryParam("role"), Origin: c.QueryParam("origin"),
		}
		ctx, cancel := context.WithTimeout(c.Request().Context(), 5*time.Second)
		defer cancel()
		var body tokenBody
		err := tokens.Once(&cache.Item{
			Ctx:   ctx,
			Key:   "peer:" + req.ChannelID + "/" + req.UserID + "/" + req.Role + "/" + req.Origin,
			Value: &body,
			TTL:   5 * time.Hour,
			Do: func(*cache.Item) (any, error) {
				t, err := upstream.ChatToken(ctx, req)
				if err != nil {
					return nil, err
				}
				return &tokenBody{
					ChannelID: req.ChannelID, UserID: req.UserID, Role: req.Role, Origin: req.Origin,
					Token: t.Token, MediaChannelKey: t.MediaChannelKey, RoomID: t.RoomID,
					ChildRoomEnabled: t.ChildRoomEnabled, ChatAPIDomain: t.ChatAPIDomain, ChatDomain: t.ChatDomain,
					IssuedAt: t.IssuedAt.UTC().Truncate(time.Second), ExpiresAt: t.IssuedAt.Add(polyv.TokenValidity).UTC().Truncate(time.Second),
				}, nil
			},
		})
		if err != nil {
			return echo.NewHTTPError(http.StatusBadGateway, err.Error())
		}
		return c.JSON(http.StatusOK, &body)
	})
	log.Fatal(e.Start(*addr))
}
