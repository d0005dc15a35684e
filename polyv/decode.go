package polyv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// envelope is the JSON body of every Polyv reply.
type envelope struct {
	Code    *int            `json:"code"`
	Status  string          `json:"status"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data"`
}

// chatTokenData is the data of a get-chat-token or get-token success.
type chatTokenData struct {
	Token            string     `json:"token"`
	MediaChannelKey  string     `json:"mediaChannelKey"`
	RoomID           flexString `json:"roomId"`
	ChildRoomEnabled string     `json:"childRoomEnabled"`
	ChatAPIDomain    string     `json:"chatApiDomain"`
	ChatDomain       string     `json:"chatDomain"`
}

// flexString accepts a JSON string or number, as Polyv's ids come as either.
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexString(s)
		return nil
	}
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*f = flexString(n.String())
	return nil
}

// decodeReply turns a Polyv reply into its token data or a typed error:
// *APIError when the body's code says failure, *MalformedError when the body
// is not Polyv's JSON or a success carries no token.
func decodeReply(endpoint string, httpStatus int, body []byte) (chatTokenData, error) {
	malformed := func(reason string) error {
		return &MalformedError{Endpoint: endpoint, HTTPStatus: httpStatus, Reason: reason}
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return chatTokenData{}, malformed(fmt.Sprintf("body is not JSON (%d bytes)", len(body)))
	}
	if env.Code == nil {
		return chatTokenData{}, malformed("body has no code")
	}
	if *env.Code != 200 {
		return chatTokenData{}, &APIError{Endpoint: endpoint, HTTPStatus: httpStatus, Code: *env.Code, Message: truncate(env.Message, 200)}
	}
	if env.Status != "success" {
		return chatTokenData{}, malformed("code 200 without status success")
	}
	var data chatTokenData
	if err := json.Unmarshal(env.Data, &data); err != nil {
		return chatTokenData{}, malformed("data is not an object")
	}
	if data.Token == "" {
		return chatTokenData{}, malformed("success without data.token")
	}
	return data, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}
