// Command prism-interop is a Go service using a Prism gateway through nothing
// but the prism.v1 protos: the code in ./gen/prism/v1 is generated from
// prism-core/proto/prism/v1 by protoc-gen-go and protoc-gen-go-grpc.
//
// It reads an item and a message that a Python client wrote, writes its own
// item and messages for the Python client to read back, and checks every
// answer on the way: the value read equals the value written, each consumed
// payload is one that was published, an acked message never comes back and
// an unacked one does. Each step prints "ok <step>: ..." on stdout; the last
// line is "RESULT {json}" for the caller to check. Any mismatch prints
// "FAIL <step>: ..." on stderr and exits 1; bad flags exit 2.
//
// The bearer token, when the gateway needs one, comes from PRISM_TOKEN rather
// than a flag, so that it never shows in a process listing.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	prismv1 "prism.dev/gen/prism/v1"
)

// The item keys each side writes under the shared record.
const (
	pythonItemKey = "from-python"
	goItemKey     = "from-go"
)

type options struct {
	addr          string
	token         string
	kvNamespace   string
	record        string
	pythonValue   string
	qNamespace    string
	topic         string
	group         string
	pythonPayload string
	runID         string
	timeout       time.Duration
}

// result is what the caller checks after the run: what Go wrote, so that the
// Python side can find and compare it.
type result struct {
	ItemKey         string `json:"item_key"`
	ItemValue       string `json:"item_value"`
	MessageID       string `json:"message_id"`
	Payload         string `json:"payload"`
	ControlID       string `json:"control_id"`
	ControlPayload  string `json:"control_payload"`
	PythonMessageID string `json:"python_message_id"`
	ControlAttempt  uint32 `json:"control_attempt"`
	Unauthenticated bool   `json:"unauthenticated_checked"`
}

// failure is a mismatch found at one step.
type failure struct {
	step string
	err  error
}

func (f *failure) Error() string { return fmt.Sprintf("%s: %v", f.step, f.err) }

func fail(step, format string, args ...any) error {
	return &failure{step: step, err: fmt.Errorf(format, args...)}
}

// call wraps an RPC error with the step it broke and its gRPC status, which
// carries the gateway's own explanation (namespace, field, limit).
func call(step string, err error) error {
	if st, ok := status.FromError(err); ok {
		return fail(step, "%s: %s", st.Code(), st.Message())
	}
	return fail(step, "%v", err)
}

func ok(step, format string, args ...any) {
	fmt.Printf("ok %s: %s\n", step, fmt.Sprintf(format, args...))
}

func parseFlags() (options, error) {
	var o options
	fs := flag.NewFlagSet("prism-interop", flag.ContinueOnError)
	fs.StringVar(&o.addr, "addr", "", "HOST:PORT of the Prism gateway (required)")
	fs.StringVar(&o.kvNamespace, "kv-namespace", "", "a keyvalue namespace (required)")
	fs.StringVar(&o.record, "record", "", "the record id both clients write items of (required)")
	fs.StringVar(&o.pythonValue, "python-value", "", "the value the Python client put under item key "+pythonItemKey)
	fs.StringVar(&o.qNamespace, "queue-namespace", "", "a queue namespace (required)")
	fs.StringVar(&o.topic, "topic", "", "a topic that holds only the Python client's message (required)")
	fs.StringVar(&o.group, "group", "", "the consumer group this client reads with; must be unread (required)")
	fs.StringVar(&o.pythonPayload, "python-payload", "", "the payload of the one message the Python client published")
	fs.StringVar(&o.runID, "run-id", "", "a unique string put into every value this client writes (required)")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "deadline for the whole run")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return o, err
	}
	required := []struct{ name, value string }{
		{"addr", o.addr}, {"kv-namespace", o.kvNamespace}, {"record", o.record},
		{"queue-namespace", o.qNamespace}, {"topic", o.topic}, {"group", o.group}, {"run-id", o.runID},
	}
	for _, req := range required {
		if req.value == "" {
			return o, fmt.Errorf("-%s is required; see -help", req.name)
		}
	}
	o.token = os.Getenv("PRISM_TOKEN")
	return o, nil
}

func main() {
	o, err := parseFlags()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "prism-interop: %v\n", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	res, err := run(ctx, o)
	if err != nil {
		var f *failure
		if errors.As(err, &f) {
			fmt.Fprintf(os.Stderr, "FAIL %s: %v\n", f.step, f.err)
		} else {
			fmt.Fprintf(os.Stderr, "FAIL %v\n", err)
		}
		os.Exit(1)
	}
	out, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL result: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("RESULT %s\n", out)
}

func run(ctx context.Context, o options) (*result, error) {
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fail("connect", "%v", err)
	}
	defer conn.Close()
	kv := prismv1.NewKeyValueServiceClient(conn)
	q := prismv1.NewQueueServiceClient(conn)
	res := &result{
		ItemKey:        goItemKey,
		ItemValue:      "written by Go " + o.runID,
		Payload:        "published by Go " + o.runID,
		ControlPayload: "left unacked by Go " + o.runID,
	}

	if o.token != "" {
		// Without the token the gateway must refuse, and say so with UNAUTHENTICATED.
		_, err := kv.GetItems(ctx, &prismv1.GetItemsRequest{Namespace: o.kvNamespace, Id: o.record})
		if status.Code(err) != codes.Unauthenticated {
			return nil, fail("auth", "a call without a token got %v, want Unauthenticated", err)
		}
		ok("auth", "a call without a token is refused with %s", codes.Unauthenticated)
		res.Unauthenticated = true
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+o.token)
	}

	if err := keyValue(ctx, kv, o, res); err != nil {
		return nil, err
	}
	if err := queue(ctx, q, o, res); err != nil {
		return nil, err
	}
	return res, nil
}

func keyValue(ctx context.Context, kv prismv1.KeyValueServiceClient, o options, res *result) error {
	got, err := kv.GetItems(ctx, &prismv1.GetItemsRequest{
		Namespace: o.kvNamespace, Id: o.record,
		Predicate: &prismv1.Predicate{Match: &prismv1.Predicate_Keys{
			Keys: &prismv1.Keys{Keys: [][]byte{[]byte(pythonItemKey)}},
		}},
	})
	if err != nil {
		return call("get python item", err)
	}
	if len(got.Items) != 1 || string(got.Items[0].Key) != pythonItemKey ||
		string(got.Items[0].Value) != o.pythonValue {
		return fail("get python item", "want one item %s=%q, got %s", pythonItemKey, o.pythonValue, items(got.Items))
	}
	ok("get python item", "%s/%s %s=%q", o.kvNamespace, o.record, pythonItemKey, got.Items[0].Value)

	// An idempotency token, as a production client sends with every write so
	// that its retries are safe.
	token := &prismv1.IdempotencyToken{GenerationTime: timestamppb.Now(), Nonce: "go-" + o.runID}
	_, err = kv.PutItems(ctx, &prismv1.PutItemsRequest{
		Namespace: o.kvNamespace, Id: o.record, Token: token,
		Items: []*prismv1.Item{{Key: []byte(goItemKey), Value: []byte(res.ItemValue)}},
	})
	if err != nil {
		return call("put", err)
	}
	ok("put", "%s/%s %s=%q", o.kvNamespace, o.record, goItemKey, res.ItemValue)

	// Every item of the record, in key order: Go's write next to Python's.
	got, err = kv.GetItems(ctx, &prismv1.GetItemsRequest{Namespace: o.kvNamespace, Id: o.record})
	if err != nil {
		return call("get", err)
	}
	want := []*prismv1.Item{
		{Key: []byte(goItemKey), Value: []byte(res.ItemValue)},
		{Key: []byte(pythonItemKey), Value: []byte(o.pythonValue)},
	}
	if !sameItems(got.Items, want) || got.NextPageToken != "" {
		return fail("get", "want %s on one page, got %s (next page token %q)",
			items(want), items(got.Items), got.NextPageToken)
	}
	ok("get", "read back %s", items(got.Items))
	return nil
}

func queue(ctx context.Context, q prismv1.QueueServiceClient, o options, res *result) error {
	published, err := q.Publish(ctx, &prismv1.PublishRequest{
		Namespace: o.qNamespace, Topic: o.topic,
		Messages: []*prismv1.Message{
			{Payload: []byte(res.Payload), Headers: map[string][]byte{"lang": []byte("go")}},
			{Payload: []byte(res.ControlPayload)},
		},
	})
	if err != nil {
		return call("publish", err)
	}
	if len(published.Ids) != 2 || published.Ids[0] == "" || published.Ids[1] == "" ||
		published.Ids[0] == published.Ids[1] {
		return fail("publish", "want two distinct message ids, got %q", published.Ids)
	}
	res.MessageID, res.ControlID = published.Ids[0], published.Ids[1]
	ok("publish", "%s/%s ids %q", o.qNamespace, o.topic, published.Ids)

	subscriptionID, err := subscribeAndAck(ctx, q, o, res)
	if err != nil {
		return err
	}

	// The stream is gone: what it held and did not ack (the control message)
	// is delivered again at once, counting its attempt; what it acked is not.
	// The wait only bounds how long the gateway may take to notice the stream
	// ended; the call returns as soon as a delivery is there.
	consumed, err := q.Consume(ctx, &prismv1.ConsumeRequest{
		Namespace: o.qNamespace, Topic: o.topic, Group: o.group, MaxMessages: 10,
		Wait: durationpb.New(20 * time.Second),
	})
	if err != nil {
		return call("redelivery", err)
	}
	if len(consumed.Deliveries) != 1 || consumed.Deliveries[0].Id != res.ControlID ||
		string(consumed.Deliveries[0].Payload) != res.ControlPayload || consumed.Deliveries[0].Attempt != 2 {
		return fail("redelivery", "after subscription %s ended, want only the unacked control message %s "+
			"again (attempt 2), got %s", subscriptionID, res.ControlID, deliveries(consumed.Deliveries))
	}
	res.ControlAttempt = consumed.Deliveries[0].Attempt
	ok("redelivery", "only the unacked message came back: %s", deliveries(consumed.Deliveries))

	if _, err := q.Ack(ctx, &prismv1.AckRequest{
		Namespace: o.qNamespace, Topic: o.topic, Group: o.group, Ids: []string{res.ControlID},
	}); err != nil {
		return call("ack consumed", err)
	}
	ok("ack consumed", "%s", res.ControlID)

	// Every message is acked now: nothing is left for this group.
	left, err := q.Consume(ctx, &prismv1.ConsumeRequest{
		Namespace: o.qNamespace, Topic: o.topic, Group: o.group, MaxMessages: 10,
	})
	if err != nil {
		return call("nothing comes back", err)
	}
	if len(left.Deliveries) != 0 {
		return fail("nothing comes back", "every message was acked, yet got %s", deliveries(left.Deliveries))
	}
	ok("nothing comes back", "group %s has no deliveries left", o.group)
	return nil
}

// subscribeAndAck reads the three messages of the topic (Python's, Go's and
// the control) from a Subscribe stream, acks the first two and ends the
// stream holding the control, unacked. It returns the subscription id.
func subscribeAndAck(ctx context.Context, q prismv1.QueueServiceClient, o options, res *result) (string, error) {
	streamCtx, endStream := context.WithCancel(ctx)
	defer endStream()
	stream, err := q.Subscribe(streamCtx, &prismv1.SubscribeRequest{
		Namespace: o.qNamespace, Topic: o.topic, Group: o.group, MaxInFlight: 10,
	})
	if err != nil {
		return "", call("subscribe", err)
	}
	first, err := stream.Recv()
	if err != nil {
		return "", call("subscribe", err)
	}
	subscriptionID := first.GetSubscriptionId()
	if subscriptionID == "" {
		return "", fail("subscribe", "the first response must carry the subscription id, got %v", first)
	}

	byPayload := map[string]*prismv1.Delivery{}
	for len(byPayload) < 3 {
		got, err := stream.Recv()
		if err != nil {
			return "", call("subscribe", fmt.Errorf("after %d of 3 deliveries: %w", len(byPayload), err))
		}
		d := got.GetDelivery()
		if d == nil {
			return "", fail("subscribe", "want a delivery, got %v", got)
		}
		payload := string(d.Payload)
		if payload != o.pythonPayload && payload != res.Payload && payload != res.ControlPayload {
			return "", fail("subscribe", "a payload nobody published on this topic: %s", deliveries([]*prismv1.Delivery{d}))
		}
		if byPayload[payload] != nil {
			return "", fail("subscribe", "delivered twice on one stream: %s", deliveries([]*prismv1.Delivery{d}))
		}
		if d.Attempt != 1 || d.Topic != o.topic || d.Group != o.group {
			return "", fail("subscribe", "want attempt 1 on %s/%s, got %s", o.topic, o.group,
				deliveries([]*prismv1.Delivery{d}))
		}
		byPayload[payload] = d
	}
	mine, python := byPayload[res.Payload], byPayload[o.pythonPayload]
	if mine.Id != res.MessageID || string(mine.Headers["lang"]) != "go" {
		return "", fail("subscribe", "Go's message came back as %s, want id %s with header lang=go",
			deliveries([]*prismv1.Delivery{mine}), res.MessageID)
	}
	if byPayload[res.ControlPayload].Id != res.ControlID {
		return "", fail("subscribe", "the control message came back with id %s, want %s",
			byPayload[res.ControlPayload].Id, res.ControlID)
	}
	res.PythonMessageID = python.Id
	ok("subscribe", "subscription %s delivered %q, %q and %q", subscriptionID,
		o.pythonPayload, res.Payload, res.ControlPayload)

	if _, err := q.Ack(ctx, &prismv1.AckRequest{
		Namespace: o.qNamespace, Topic: o.topic, Group: o.group,
		Ids: []string{python.Id, mine.Id}, SubscriptionId: subscriptionID,
	}); err != nil {
		return "", call("ack", err)
	}
	ok("ack", "%s and %s on subscription %s", python.Id, mine.Id, subscriptionID)

	// End the stream as a consumer that goes away does: cancel it, then read
	// until the cancellation is reported, so that it has really ended.
	endStream()
	for {
		if _, err := stream.Recv(); err != nil {
			if status.Code(err) != codes.Canceled && !errors.Is(err, io.EOF) {
				return "", call("end stream", err)
			}
			break
		}
	}
	ok("end stream", "subscription %s cancelled, holding %s unacked", subscriptionID, res.ControlID)
	return subscriptionID, nil
}

func sameItems(got, want []*prismv1.Item) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if !bytes.Equal(got[i].Key, want[i].Key) || !bytes.Equal(got[i].Value, want[i].Value) {
			return false
		}
	}
	return true
}

func items(list []*prismv1.Item) string {
	var b bytes.Buffer
	b.WriteString("[")
	for i, item := range list {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%q", item.Key, item.Value)
	}
	b.WriteString("]")
	return b.String()
}

func deliveries(list []*prismv1.Delivery) string {
	var b bytes.Buffer
	b.WriteString("[")
	for i, d := range list {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "{id %s attempt %d payload %q}", d.Id, d.Attempt, d.Payload)
	}
	b.WriteString("]")
	return b.String()
}
