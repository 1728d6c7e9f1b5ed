FROM python:3.11-slim
RUN useradd --system --home /var/lib/pgproxy pgproxy
WORKDIR /opt/pgproxy
COPY pyproject.toml README.md ./
COPY pgproxy ./pgproxy
RUN pip install --no-cache-dir .
# The example policies; mount your own directory over /etc/pgproxy/policies.
COPY policies /etc/pgproxy/policies
ENV PGPROXY_POLICIES=/etc/pgproxy/policies
USER pgproxy
EXPOSE 6432
ENTRYPOINT ["pgproxy"]
CMD ["run"]
