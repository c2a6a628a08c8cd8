package dataversetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// apiError is a Web API error: the HTTP status plus the {"error":{"code","message"}}
// envelope Dataverse sends (Learn: webapi/compose-http-requests-handle-errors).
type apiError struct {
	status  int
	code    string
	message string
	header  http.Header // extra response headers (Retry-After, WWW-Authenticate)
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s %s", e.status, e.code, e.message) }

func errf(status int, code, format string, a ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, a...)}
}

// Error codes used by the simulator. Names and hex values are from Learn:
// reference/web-service-error-codes and web-api-client-errors; where Microsoft documents no
// HTTP status for a code, the status used here is the likely one.
const (
	codeObjectDoesNotExist       = "0x80040217"
	codeAltKeyNotFound           = "0x80060891"
	codeDuplicateRecord          = "0x80040237"
	codeDuplicateEntityKey       = "0x80060892"
	codeConcurrencyMismatch      = "0x80060882"
	codePayloadError             = "0x80048d19"
	codeResourceNotFound         = "0x8006088a"
	codeValidation               = "0x80044331"
	codeZero                     = "0x0"
	codeUnexpected               = "0x80040216"
	codeInvalidArgument          = "0x80040203"
	codeReadOnly                 = "0x8004022e"
	codeCascadeDeleteNotAllowed  = "0x80048103"
	codeProductNumberExists      = "0x80043b06"
	codeProductNoProductNumber   = "0x80043b05"
	codeProductMissingUomSched   = "0x80043b13"
	codeProductInvalidUnit       = "0x80043b14"
	codeCannotSetProductAsParent = "0x8004f998"
	codeChildOfNonActiveFamily   = "0x8004f909"
	codeOnlyUpdatedInDraft       = "0x8004f995"
	codeActiveToDraft            = "0x8004f912"
	codeDraftToRevised           = "0x8004f913"
	codeAlreadyDraft             = "0x8004f981"
	codeAlreadyActive            = "0x8004f982"
	codeDuplicateProductPrice    = "0x80043b08"
	codePriceLevelNameExists     = "0x80043b0f"
	codeDuplicateIsoCurrency     = "0x80048cf3"
	codeCurrencyNotEqual         = "0x80048ced"
	codeBothProductAndDesc       = "0x80043afb"
	codeBothUomAndDesc           = "0x80043afa"
	codeReqLimit                 = "0x80072322"
	codeTimeLimit                = "0x80072321"
	codeConcurrencyLimit         = "0x80072326"
	codeTooManyConditions        = "0x8004430c" // TooManyConditionsInQuery
	codeCannotRetireInPriceList  = "0x8004f997" // CannotRetireProductFromActiveBundle
	codeProductHasUnretiredChild = "0x8004f910" // ProductHasUnretiredChild
	codePrivilegeDenied          = "0x80040220" // PrivilegeDenied
)

func notFoundByID(logical, id string) *apiError {
	return errf(http.StatusNotFound, codeObjectDoesNotExist, "%s With Id = %s Does Not Exist", logical, id)
}

func notFoundByKey(logical string) *apiError {
	return errf(http.StatusNotFound, codeAltKeyNotFound, "A record with the specified key values does not exist in %s entity", logical)
}

func invalidProperty(logical, name string) *apiError {
	return errf(http.StatusBadRequest, codePayloadError,
		"Invalid property '%s' was found in entity 'Microsoft.Dynamics.CRM.%s'.", name, logical)
}

func noSuchProperty(logical, name string) *apiError {
	return errf(http.StatusBadRequest, codeZero, "Could not find a property named '%s' on type 'Microsoft.Dynamics.CRM.%s'.", name, logical)
}

func readOnlyRecord(logical string) *apiError {
	return errf(http.StatusBadRequest, codeReadOnly, "The object cannot be updated because it is read-only. (%s is closed: Cannot Update a Read-Only Entity)", logical)
}

// ErrorAnswer is the answer Dataverse's Web API gives r for an error: status, the JSON
// error envelope {"error":{"code","message"}} and OData-Version 4.0 (Learn,
// compose-http-requests-handle-errors). Tests put it in a transport in front of the
// simulator to answer chosen requests with an error the simulator never gives.
func ErrorAnswer(r *http.Request, status int, code, message string) *http.Response {
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": message}})
	h := http.Header{}
	h.Set("Content-Type", "application/json; odata.metadata=minimal")
	h.Set("OData-Version", "4.0")
	return &http.Response{StatusCode: status, Status: strconv.Itoa(status) + " " + http.StatusText(status), Header: h,
		Body: io.NopCloser(bytes.NewReader(b)), ContentLength: int64(len(b)), Request: r, ProtoMajor: 1, ProtoMinor: 1}
}
