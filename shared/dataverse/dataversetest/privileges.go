package dataversetest

import (
	"net/http"

	"github.com/google/uuid"
)

// Privilege operations a security role grants per table (Create, Read, Write, Delete, ...;
// https://learn.microsoft.com/power-platform/admin/security-roles-privileges).
const (
	PrivCreate = "Create"
	PrivRead   = "Read"
	PrivWrite  = "Write"
	PrivDelete = "Delete"
)

// privilegeNames are the schema names Dataverse uses in privilege names (prvCreateProduct)
// and the tables' object type codes, as its PrivilegeDenied message shows them.
var privilegeNames = map[string]struct {
	name string
	otc  int
}{
	"contact": {"Contact", 2}, "account": {"Account", 1}, "product": {"Product", 1024},
	"productpricelevel": {"ProductPriceLevel", 1026}, "pricelevel": {"PriceLevel", 1022},
	"uom": {"UoM", 1055}, "uomschedule": {"UoMSchedule", 1056}, "transactioncurrency": {"TransactionCurrency", 9105},
	"salesorder": {"SalesOrder", 1088}, "salesorderdetail": {"SalesOrderDetail", 1089},
	"invoice": {"Invoice", 1090}, "invoicedetail": {"InvoiceDetail", 1091},
	"orderclose": {"OrderClose", 4209}, "organization": {"Organization", 1019},
}

// DenyPrivilege takes a privilege away from the application user's security role: every
// request needing op (PrivCreate, PrivRead, PrivWrite, PrivDelete) on the entity set
// fails with 403 PrivilegeDenied (0x80040220) until AllowPrivilege gives it back.
func (s *Server) DenyPrivilege(set, op string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.denied == nil {
		s.denied = map[string]bool{}
	}
	s.denied[set+"/"+op] = true
}

// AllowPrivilege gives back a privilege DenyPrivilege took.
func (s *Server) AllowPrivilege(set, op string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.denied, set+"/"+op)
}

// checkPrivilege refuses op on t when the role lacks it, with Dataverse's message shape:
// "Principal user (Id=…, type=8, …), is missing prvCreateProduct privilege (Id=…) on
// OTC=1024 for entity 'product'." (code 0x80040220 PrivilegeDenied, HTTP 403; Learn:
// reference/web-service-error-codes).
// Direct writes of a test (Insert, Update, Delete) are not checked.
func (s *Server) checkPrivilege(x *tx, t *table, op string) *apiError {
	if x.system || !s.denied[t.set+"/"+op] {
		return nil
	}
	pn, ok := privilegeNames[t.logical]
	if !ok {
		pn.name = titleCase(t.logical)
	}
	prv := "prv" + op + pn.name
	return errf(http.StatusForbidden, codePrivilegeDenied,
		"Principal user (Id=%s, type=8, roleCount=1, privilegeCount=412, accessMode=0), is missing %s privilege (Id=%s) on OTC=%d for entity '%s'. context.Caller=%s",
		s.userID, prv, uuid.NewSHA1(uuid.NameSpaceOID, []byte(prv)), pn.otc, t.logical, s.userID)
}

// privilegeOp is the privilege a request on a table needs, "" when none is checked here
// (writes are checked where rows are created or changed).
func privilegeOp(method string) string {
	switch method {
	case http.MethodGet:
		return PrivRead
	case http.MethodDelete:
		return PrivDelete
	}
	return ""
}
