FROM python:3.11-slim
RUN useradd --system --home /var/lib/pgproxy pgproxy
WORKDIR /opt/pgproxy
COPY pyproject.toml README.md ./
COPY pgproxy ./pgproxy
RUN pip install --no-cache-dir .
USER pgproxy
EXPOSE 6432
ENTRYPOINT ["pgproxy"]
CMD ["run"]
