package dataverse

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

func TestBuildBatchWritesCRLFMultipart(t *testing.T) {
	ops, body, boundary, err := buildBatch("/api/data/v9.2/", []BatchPart{
		Op{Method: "GET", Path: "contacts(1)?$select=lastname"},
		ChangeSet(
			Op{Method: "POST", Path: "salesorders", Body: Record{"name": "A"}, ContentID: "1"},
			Op{Method: "POST", Path: "salesorderdetails", Body: Record{"salesorderid@odata.bind": "$1"}},
			Op{Method: "PATCH", Path: "$1", Body: Record{"name": "B"}, Header: map[string]string{"If-Match": "*"}},
		),
		Op{Method: "DELETE", Path: "contacts(2)"},
	})
	if err != nil {
		t.Fatal(err)
	}
	cs := regexp.MustCompile(`changeset_[0-9a-f-]{36}`).FindString(string(body))
	if !strings.HasPrefix(boundary, "batch_") || cs == "" {
		t.Fatalf("boundaries %q %q", boundary, cs)
	}
	want := strings.NewReplacer("{B}", boundary, "{C}", cs, "\n", "\r\n").Replace(`--{B}
Content-Type: application/http
Content-Transfer-Encoding: binary

GET /api/data/v9.2/contacts(1)?$select=lastname HTTP/1.1
Accept: application/json


--{B}
Content-Type: multipart/mixed; boundary={C}

--{C}
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

POST /api/data/v9.2/salesorders HTTP/1.1
Accept: application/json
Content-Type: application/json
Content-Length: 12

{"name":"A"}
--{C}
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

POST /api/data/v9.2/salesorderdetails HTTP/1.1
Accept: application/json
Content-Type: application/json
Content-Length: 32

{"salesorderid@odata.bind":"$1"}
--{C}
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 3

PATCH $1 HTTP/1.1
Accept: application/json
If-Match: *
Content-Type: application/json
Content-Length: 12

{"name":"B"}
--{C}--
--{B}
Content-Type: application/http
Content-Transfer-Encoding: binary

DELETE /api/data/v9.2/contacts(2) HTTP/1.1
Accept: application/json


--{B}--
`)
	if string(body) != want {
		t.Fatalf("batch body:\n%s\nwant:\n%s", body, want)
	}
	if bytes.Contains(bytes.ReplaceAll(body, []byte("\r\n"), nil), []byte("\n")) {
		t.Fatal("bare LF in batch body")
	}
	if len(ops) != 5 || ops[2].ContentID != "2" || ops[2].cs != 1 || ops[4].cs != 0 {
		t.Fatalf("ops = %+v", ops)
	}
	// bad input is refused before anything is sent
	for name, parts := range map[string][]BatchPart{
		"GET in change set": {ChangeSet(Op{Method: "GET", Path: "contacts"})},
		"duplicate id":      {ChangeSet(Op{Method: "POST", Path: "a", ContentID: "1"}, Op{Method: "POST", Path: "b", ContentID: "1"})},
		"empty":             nil,
		"header injection":  {Op{Method: "GET", Path: "a", Header: map[string]string{"X": "1\r\nAuthorization: x"}}},
	} {
		if _, _, _, err := buildBatch("/api/data/v9.2/", parts); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	many := make([]Op, MaxBatchRequests+1)
	for i := range many {
		many[i] = Op{Method: "DELETE", Path: fmt.Sprintf("contacts(%d)", i)}
	}
	if _, _, _, err := buildBatch("/x/", []BatchPart{ChangeSet(many...)}); err == nil {
		t.Error("more than 1000 requests accepted")
	}
}

// batchOpReq is one request parsed from a $batch body by the fake server.
type batchOpReq struct {
	contentID string
	req       *http.Request
	body      string
}

// parseBatchRequest is the server side: strict CRLF multipart parsing.
func parseBatchRequest(t *testing.T, r *http.Request) [][]batchOpReq {
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		t.Errorf("batch Content-Type: %v", err)
		return nil
	}
	raw, _ := io.ReadAll(r.Body)
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
		t.Error("bare LF in batch body")
	}
	var groups [][]batchOpReq
	mr := multipart.NewReader(bytes.NewReader(raw), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return groups
		}
		if err != nil {
			t.Errorf("batch part: %v", err)
			return nil
		}
		mt, pp, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		if mt == "multipart/mixed" {
			var g []batchOpReq
			ir := multipart.NewReader(p, pp["boundary"])
			for {
				ip, err := ir.NextPart()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Errorf("change set part: %v", err)
					return nil
				}
				g = append(g, readOpReq(t, ip))
			}
			groups = append(groups, g)
			continue
		}
		groups = append(groups, []batchOpReq{readOpReq(t, p)})
	}
}

func readOpReq(t *testing.T, p *multipart.Part) batchOpReq {
	br := bufio.NewReader(p)
	req, err := http.ReadRequest(br)
	if err != nil {
		t.Errorf("inner request: %v", err)
		return batchOpReq{}
	}
	// parts carry no Content-Length: the body runs to the part's end
	b, _ := io.ReadAll(br)
	return batchOpReq{contentID: p.Header.Get("Content-ID"), req: req, body: string(b)}
}

// batchServer answers change sets all-or-nothing like Dataverse: an op
// whose body contains "fail" fails the change set, which comes back as one
// error part echoing the failing Content-ID (when echoID), and the batch stops.
func batchServer(t *testing.T, echoID bool, written *[]string) *fakeEnv {
	return newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		groups := parseBatchRequest(t, r)
		var out bytes.Buffer
		const rb = "batchresponse_1"
		status := 200
		answer := func(buf *bytes.Buffer, boundary, cid, statusLine, headers, body string) {
			fmt.Fprintf(buf, "--%s\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n", boundary)
			if cid != "" {
				fmt.Fprintf(buf, "Content-ID: %s\r\n", cid)
			}
			fmt.Fprintf(buf, "\r\nHTTP/1.1 %s\r\n%s\r\n%s\r\n", statusLine, headers, body)
		}
	groups:
		for gi, g := range groups {
			inCS := len(g) > 1 || g[0].contentID != ""
			for _, o := range g {
				if strings.Contains(o.body, "fail") {
					cid := ""
					if echoID {
						cid = o.contentID
					}
					answer(&out, rb, cid, "400 Bad Request", "Content-Type: application/json; odata.metadata=minimal\r\nOData-Version: 4.0\r\n",
						`{"error":{"code":"0x80040203","message":"Invalid value in part `+o.contentID+`"}}`)
					status = 400
					break groups
				}
			}
			if !inCS {
				o := g[0]
				*written = append(*written, o.req.Method+" "+o.req.URL.Path)
				answer(&out, rb, "", "200 OK", "Content-Type: application/json; odata.metadata=minimal\r\nOData-Version: 4.0\r\n", `{"value":[{"n":1}]}`)
				continue
			}
			cs := fmt.Sprintf("changesetresponse_%d", gi)
			fmt.Fprintf(&out, "--%s\r\nContent-Type: multipart/mixed; boundary=%s\r\n\r\n", rb, cs)
			for k, o := range g {
				*written = append(*written, o.req.Method+" "+o.req.URL.Path)
				id := fmt.Sprintf("00000000-0000-0000-0000-%012d", gi*100+k)
				answer(&out, cs, o.contentID, "204 No Content", "OData-Version: 4.0\r\nOData-EntityId: https://x/api/data/v9.2/salesorders("+id+")\r\n", "")
			}
			fmt.Fprintf(&out, "--%s--\r\n", cs)
		}
		fmt.Fprintf(&out, "--%s--\r\n", rb)
		w.Header().Set("Content-Type", "multipart/mixed; boundary="+rb)
		w.Header().Set("OData-Version", "4.0")
		w.WriteHeader(status)
		_, _ = w.Write(out.Bytes())
	})
}

func TestBatchParsesNestedChangeSetAnswers(t *testing.T) {
	var written []string
	f := batchServer(t, true, &written)
	c, _ := f.newClient(t, nil)
	res, err := c.Batch(context.Background(),
		ChangeSet(
			Op{Method: "POST", Path: "salesorders", Body: Record{"name": "A"}, ContentID: "1"},
			Op{Method: "POST", Path: "salesorderdetails", Body: Record{"salesorderid@odata.bind": "$1"}, ContentID: "2"},
		),
		Op{Method: "GET", Path: "contacts"},
	)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 {
		t.Fatalf("results = %+v", res)
	}
	if res[0].ContentID != "1" || res[0].StatusCode != 204 || res[0].EntityID != "00000000-0000-0000-0000-000000000000" || res[0].ChangeSet != 1 || res[0].Path != "salesorders" {
		t.Errorf("part 1 = %+v", res[0])
	}
	if res[1].ContentID != "2" || res[1].EntityID != "00000000-0000-0000-0000-000000000001" || res[1].Method != "POST" {
		t.Errorf("part 2 = %+v", res[1])
	}
	var page struct{ Value []Record }
	if res[2].StatusCode != 200 || res[2].ChangeSet != 0 || res[2].Decode(&page) != nil || len(page.Value) != 1 {
		t.Errorf("part 3 = %+v", res[2])
	}
}

func TestBatchFailedChangeSetNamesThePart(t *testing.T) {
	for _, echo := range []bool{true, false} {
		t.Run(fmt.Sprintf("echoContentID=%v", echo), func(t *testing.T) {
			var written []string
			f := batchServer(t, echo, &written)
			c, _ := f.newClient(t, nil)
			res, err := c.Batch(context.Background(),
				ChangeSet(
					Op{Method: "POST", Path: "salesorders", Body: Record{"name": "ok"}},
					Op{Method: "POST", Path: "salesorderdetails", Body: Record{"x": "ok"}},
				),
				ChangeSet(
					Op{Method: "POST", Path: "salesorders", Body: Record{"name": "ok"}},
					Op{Method: "POST", Path: "salesorderdetails", Body: Record{"x": "fail"}},
					Op{Method: "POST", Path: "salesorderdetails", Body: Record{"x": "ok"}},
				),
				Op{Method: "GET", Path: "contacts"},
			)
			var be *BatchError
			if !errors.As(err, &be) {
				t.Fatalf("err = %v, want *BatchError; results %+v written %v", err, res, written)
			}
			if be.ChangeSet != 2 || be.Err.StatusCode != 400 || be.Err.Code != "0x80040203" || IsRetryable(err) {
				t.Fatalf("batch error = %+v", be)
			}
			if echo {
				if be.Part != 4 || be.ContentID != "4" || be.Op != "POST salesorderdetails" {
					t.Fatalf("batch error = %+v", be)
				}
				if !strings.Contains(err.Error(), "part 4, change set 2 rolled back, Content-ID 4, POST salesorderdetails") {
					t.Fatalf("error text = %q", err)
				}
			} else if !strings.Contains(err.Error(), "change set 2 rolled back") {
				t.Fatalf("error text = %q", err)
			}
			if len(res) != 3 || res[2].Err == nil || res[0].Err != nil {
				t.Fatalf("results = %+v", res)
			}
			if len(written) != 2 {
				t.Fatalf("server applied %v", written)
			}
		})
	}
}

func TestBatchStopsAtFailingSingleOp(t *testing.T) {
	var written []string
	f := batchServer(t, true, &written)
	c, _ := f.newClient(t, nil)
	res, err := c.Batch(context.Background(),
		Op{Method: "POST", Path: "ConvertSalesOrderToInvoice", Body: Record{"SalesOrderId": "a"}},
		Op{Method: "POST", Path: "ConvertSalesOrderToInvoice", Body: Record{"SalesOrderId": "fail"}},
		Op{Method: "POST", Path: "ConvertSalesOrderToInvoice", Body: Record{"SalesOrderId": "c"}},
	)
	var be *BatchError
	if !errors.As(err, &be) || be.Part != 2 || be.ChangeSet != 0 || be.Op != "POST ConvertSalesOrderToInvoice" {
		t.Fatalf("err = %v (%+v)", err, be)
	}
	if len(res) != 2 || res[0].Part != 1 || res[0].Err != nil || res[1].Part != 2 || res[1].Err == nil {
		t.Fatalf("results = %+v", res)
	}
	if len(written) != 1 {
		t.Fatalf("server applied %v", written)
	}
}
