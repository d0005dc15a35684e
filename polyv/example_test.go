package polyv_test

import (
	"context"
	"fmt"

	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

func Example() {
	sim := polyvsim.NewTestServer(polyvsim.Options{AppID: "my-app", AppSecret: "my-secret"})
	defer sim.Close()

	client, err := polyv.New(polyv.Options{AppID: "my-app", AppSecret: "my-secret", BaseURL: sim.URL})
	if err != nil {
		fmt.Println(err)
		return
	}
	tok, err := client.ChatToken(context.Background(), polyv.ChatTokenRequest{
		ChannelID: "2094979", UserID: "1b448be323", Role: "viewer", Origin: "web",
	})
	if err != nil {
		fmt.Println(polyv.Classify(err), err)
		return
	}
	fmt.Println(len(tok.Token), tok.RoomID, tok.ChatDomain)

	_, err = client.ChatToken(context.Background(), polyv.ChatTokenRequest{ChannelID: "2094979", UserID: "u", Role: "king"})
	fmt.Println(polyv.Classify(err), err)
	// Output:
	// 32 2094979 chat.polyv.net
	// rejected polyv: get-chat-token: code 400: param validate error
}
