package dataversetest

import "net/http"

func (s *Server) beforeCreate(x *tx, t *table, r *row, body map[string]any) *apiError { return nil }
func (s *Server) beforeUpdate(x *tx, t *table, old, r *row, body map[string]any) *apiError {
	return nil
}
func (s *Server) afterWrite(x *tx, t *table, old, r *row) *apiError { return nil }
func (s *Server) beforeDelete(x *tx, t *table, r *row) *apiError    { return nil }
func (s *Server) afterDelete(x *tx, t *table, r *row) *apiError     { return nil }
func (s *Server) unboundAction(x *tx, q *apiReq, name string) (*apiResp, *apiError) {
	return nil, errf(http.StatusNotImplemented, "", "not yet")
}
func (s *Server) boundAction(x *tx, q *apiReq, t *table, k rowKey, name string) (*apiResp, *apiError) {
	return nil, errf(http.StatusNotImplemented, "", "not yet")
}
func (s *Server) bulk(x *tx, q *apiReq, t *table, name string) (*apiResp, *apiError) {
	return nil, errf(http.StatusNotImplemented, "", "not yet")
}
func (s *Server) batch(q *apiReq) (*apiResp, int, int, int) {
	return errResp(errf(http.StatusNotImplemented, "", "not yet")), 0, 0, 1
}
