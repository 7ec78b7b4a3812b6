"""``/api/v1/reports`` and ``/api/v1/exports``: what report and export tasks produced, and their files.

Files are served only from inside ``settings.reports_dir`` / ``settings.exports_dir``: a stored path
that resolves anywhere else (``..``, an absolute path, a symlink out) is answered 404, never read.
A user downloads only their own exports; reports are the mall's and readable by every token.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from sqlalchemy import func, select

from services.gateway import audit as gateway_audit
from services.gateway import authz
from services.gateway.deps import CurrentPrincipal, RuntimeDep, SessionDep
from services.gateway.problems import ProblemError
from services.gateway.routes import API_PREFIX
from services.gateway.schemas import ExportInfo, ExportList, ReportDetail, ReportList, ReportSummary
from shared import audit
from shared.models import Export, Report

router = APIRouter(prefix=API_PREFIX, tags=["reports and exports"])

ReportKind = Literal["hourly", "daily", "weekly", "monthly", "access"]
ReportId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
ExportTaskId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file.",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}},
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
                "schema": {"type": "string", "format": "binary"}
            },
        },
    },
}


def contained(base: Path, stored: str | None) -> Path | None:
    """``stored`` (relative to ``base``, or absolute) as a file inside ``base``, or None if it is not."""
    if not stored:
        return None
    root = base.resolve()
    try:
        path = (root / stored).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if path == root or not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _formats(report: Report) -> list[Literal["csv", "html"]]:
    result: list[Literal["csv", "html"]] = []
    if report.csv_path:
        result.append("csv")
    if report.html_path:
        result.append("html")
    return result


def _summary(report: Report) -> ReportSummary:
    return ReportSummary(
        id=report.id,
        kind=report.kind,
        period_start=report.period_start,
        period_end=report.period_end,
        task_id=report.task_id,
        created_at=report.created_at,
        formats=_formats(report),
    )


@router.get("/reports", response_model=ReportList, summary="Reports, newest period first")
def list_reports(
    access: authz.ReportReader,
    session: SessionDep,
    kind: Annotated[ReportKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ReportList:
    clauses = [Report.kind == kind] if kind else []
    if access.kinds is not None:
        clauses.append(Report.kind.in_(access.kinds))
    total = session.scalar(select(func.count()).select_from(Report).where(*clauses)) or 0
    rows = session.scalars(
        select(Report)
        .where(*clauses)
        .order_by(Report.period_start.desc(), Report.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return ReportList(count=total, results=[_summary(row) for row in rows])


def _report(session: SessionDep, report_id: int, access: authz.ReportAccess) -> Report:
    report = session.get(Report, report_id)
    if report is None or (access.kinds is not None and report.kind not in access.kinds):
        raise ProblemError(404, f"there is no report {report_id}", kind="unknown-report")
    return report


@router.get("/reports/{report_id}", response_model=ReportDetail, summary="One report with its figures")
def get_report(report_id: ReportId, access: authz.ReportReader, session: SessionDep) -> ReportDetail:
    report = _report(session, report_id, access)
    return ReportDetail(**_summary(report).model_dump(), data=report.data)


@router.get(
    "/reports/{report_id}/file",
    response_class=FileResponse,
    summary="A report's CSV or HTML file",
    responses=FILE_RESPONSES,
)
def report_file(
    report_id: ReportId,
    access: authz.ReportReader,
    session: SessionDep,
    runtime: RuntimeDep,
    request: Request,
    format: Annotated[Literal["csv", "html"], Query(description="Which file.")] = "html",
    lang: Annotated[
        Literal["zh_CN", "en"] | None,
        Query(description="The HTML page's language (default: MALLOPS_REPORT_LANGUAGE, zh_CN)."),
    ] = None,
) -> FileResponse:
    report = _report(session, report_id, access)
    stored = report.csv_path if format == "csv" else report.html_path
    path = contained(runtime.settings.reports_dir, stored)
    if format == "html" and stored:  # each language's page lies beside the stored one: <stem>.<lang>.html
        stem = re.sub(r"(\.(zh_CN|en))?\.html$", "", stored)
        localized = contained(runtime.settings.reports_dir, f"{stem}.{lang or runtime.settings.report_language}.html")
        path = localized or path
    if path is None:
        raise ProblemError(404, f"report {report_id} has no {format} file", kind="no-file")
    gateway_audit.record_in(session, request, audit.REPORT_DOWNLOAD, target=str(report_id), details={"format": format})
    return FileResponse(path, media_type=MEDIA_TYPES[format], filename=path.name)


def _export(session: SessionDep, task_id: str, principal: CurrentPrincipal) -> Export:
    row = session.scalar(select(Export).where(Export.task_id == task_id))
    if row is None or not authz.sees_export(principal, row.owner):
        raise ProblemError(404, f"there is no export for task {task_id!r} (or it is not yours)", kind="unknown-export")
    return row


def export_info(row: Export) -> ExportInfo:
    return ExportInfo(
        task_id=row.task_id,
        owner=row.owner,
        dataset=row.dataset,
        format=row.format,
        filters=row.filters,
        status=row.status,
        file_name=row.file_name,
        rows=row.rows,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        created_at=row.created_at,
        expires_at=row.expires_at,
        download_url=f"{API_PREFIX}/exports/{row.task_id}/download" if row.status == "done" else None,
    )


@router.get("/exports", response_model=ExportList, summary="Exports, newest first")
def list_exports(
    principal: authz.Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ExportList:
    """The token's own exports (every token's with ``exports.read.all`` and ``stores.all``), newest first."""
    everyone = authz.sees_export(principal, None)  # another owner's export (None is no token's name)
    clauses = [] if everyone else [Export.owner == principal.name]
    total = session.scalar(select(func.count()).select_from(Export).where(*clauses)) or 0
    rows = session.scalars(
        select(Export).where(*clauses).order_by(Export.created_at.desc(), Export.id.desc()).limit(limit).offset(offset)
    ).all()
    return ExportList(count=total, results=[export_info(row) for row in rows])


@router.get("/exports/{task_id}", response_model=ExportInfo, summary="An export's state")
def get_export(task_id: ExportTaskId, principal: authz.Reader, session: SessionDep) -> ExportInfo:
    return export_info(_export(session, task_id, principal))


@router.get(
    "/exports/{task_id}/download",
    response_class=FileResponse,
    summary="Download an export",
    responses={
        **FILE_RESPONSES,
        409: {"description": "The export is not finished."},
        410: {"description": "The export has expired."},
    },
)
def download_export(
    task_id: ExportTaskId, principal: authz.Reader, session: SessionDep, runtime: RuntimeDep, request: Request
) -> FileResponse:
    row = _export(session, task_id, principal)
    if row.status != "done":
        raise ProblemError(409, f"the export is {row.status}, not done; try again later", kind="export-not-ready")
    if row.expires_at is not None and row.expires_at <= dt.datetime.now(dt.UTC):
        raise ProblemError(410, "the export has expired; submit export_data again", kind="export-expired")
    path = contained(runtime.settings.exports_dir, row.file_name)
    if path is None or path.parent != runtime.settings.exports_dir.resolve():
        raise ProblemError(404, "the export's file is missing", kind="no-file")
    details = {"dataset": row.dataset, "filters": row.filters, "owner": row.owner}
    gateway_audit.record_in(session, request, audit.EXPORT_DOWNLOAD, target=task_id, details=details)
    return FileResponse(path, media_type=MEDIA_TYPES.get(row.format, "application/octet-stream"), filename=path.name)
