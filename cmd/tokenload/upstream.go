package main

import (
	"errors"
	"net/http"
	"os"
	"strconv"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/tokencache/tokencache/polyv"
)

// polyvTargeter returns a targeter that asks get-chat-token of a Polyv API
// (in practice the simulator) at base directly, signed as tokencache signs
// it: `attack -polyv` measures the upstream's own latency under the same
// load that a miss run puts on tokencache, so that the miss overhead is
// measured over what the upstream really takes. The credentials come from
// POLYV_APP_ID and POLYV_APP_SECRET, never from a flag.
func polyvTargeter(next func() (identity, string)) (vegeta.Targeter, error) {
	appID, secret := os.Getenv("POLYV_APP_ID"), os.Getenv("POLYV_APP_SECRET")
	if appID == "" || secret == "" {
		return nil, errors.New("-polyv needs POLYV_APP_ID and POLYV_APP_SECRET in the environment")
	}
	return func(t *vegeta.Target) error {
		id, base := next()
		form := polyv.SignedForm(map[string]string{
			"appId": appID, "timestamp": strconv.FormatInt(time.Now().UnixMilli(), 10),
			"channelId": id.ChannelID, "userId": id.UserID, "role": id.Role, "origin": id.Origin,
		}, secret, polyv.DefaultSignMethod)
		t.Method = http.MethodPost
		t.URL = base + polyv.ChatTokenPath
		t.Body = []byte(form.Encode())
		t.Header = http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Accept": {"application/json"}}
		return nil
	}, nil
}

// polyvReply is the part of Polyv's answer the checker reads.
type polyvReply struct {
	Code int `json:"code"`
	Data struct {
		Token string `json:"token"`
	} `json:"data"`
}
